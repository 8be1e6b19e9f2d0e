//! nf_tables over netlink against the kernel: each test runs in a thread unshared into a fresh
//! network namespace (gone with the thread), writes through `hostnet::nftables`, and reads
//! what the kernel holds back with `nft` (started from that thread, so in that namespace) and
//! with the module's own reads.

use std::process::Command;

use hostnet::nftables::{self, Action, Batch, Family, Hook, Match, Rule};
use ipnetwork::IpNetwork;

/// Runs `f` in a new network namespace of its own.
fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare netns (root?)");
        f()
    })
    .join()
    .expect("test thread")
}

/// `nft ARGS` in the calling thread's network namespace.
fn nft(args: &[&str]) -> String {
    let out = Command::new("nft").args(args).output().expect("run nft");
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn net(s: &str) -> IpNetwork {
    s.parse().expect("literal")
}

/// Rules with every expression the programs use, as `nft` prints them back.
#[test]
fn a_batch_writes_what_nft_reads_back() {
    in_new_netns(|| {
        let (sub, cluster) = (net("10.244.3.0/24"), net("10.244.0.0/16"));
        let mut b = Batch::new();
        b.add_table(Family::Ip, "t");
        b.add_chain(Family::Ip, "t", "post", Some(Hook::NatPostrouting));
        b.add_chain(Family::Ip, "t", "fwd", Some(Hook::FilterForward));
        b.add_rule(
            Family::Ip,
            "t",
            "post",
            &Rule::new(vec![Match::MarkHas(0x4000)], Action::Return),
        );
        b.add_rule(
            Family::Ip,
            "t",
            "post",
            &Rule::new(
                vec![
                    Match::from(sub),
                    Match::not_to(cluster),
                    Match::not_to(net("224.0.0.0/4")),
                ],
                Action::Masquerade {
                    fully_random: false,
                },
            )
            .with_comment("pods leaving"),
        );
        b.add_rule(
            Family::Ip,
            "t",
            "post",
            &Rule::new(
                vec![Match::not_from(cluster), Match::to(net("192.0.2.7/32"))],
                Action::Masquerade { fully_random: true },
            ),
        );
        b.add_rule(
            Family::Ip,
            "t",
            "fwd",
            &Rule::new(vec![Match::from(cluster)], Action::Accept),
        );
        b.add_table(Family::Ip6, "t");
        b.add_chain(Family::Ip6, "t", "post", Some(Hook::NatPostrouting));
        b.add_rule(
            Family::Ip6,
            "t",
            "post",
            &Rule::new(
                vec![
                    Match::from(net("fd00:10:244:3::/64")),
                    Match::not_to(net("ff00::/8")),
                ],
                Action::Masquerade {
                    fully_random: false,
                },
            ),
        );
        b.commit().expect("commit");

        let text = nft(&["list", "ruleset"]);
        for line in [
            "type nat hook postrouting priority srcnat; policy accept;",
            "type filter hook forward priority filter; policy accept;",
            "meta mark & 0x00004000 == 0x00004000 counter packets 0 bytes 0 return",
            "ip saddr 10.244.3.0/24 ip daddr != 10.244.0.0/16 ip daddr != 224.0.0.0/4 counter packets 0 bytes 0 masquerade comment \"pods leaving\"",
            "ip saddr != 10.244.0.0/16 ip daddr 192.0.2.7 counter packets 0 bytes 0 masquerade fully-random",
            "ip saddr 10.244.0.0/16 counter packets 0 bytes 0 accept",
            "ip6 saddr fd00:10:244:3::/64 ip6 daddr != ff00::/8 counter packets 0 bytes 0 masquerade",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        // The JSON form agrees: two tables, three chains, five rules.
        let json: serde_json::Value =
            serde_json::from_str(&nft(&["-j", "list", "ruleset"])).expect("nft json");
        let items = json["nftables"].as_array().expect("items");
        let count = |k: &str| items.iter().filter(|i| i.get(k).is_some()).count();
        assert_eq!(
            (count("table"), count("chain"), count("rule")),
            (2, 3, 5),
            "{json}"
        );

        // The module's own reads see the same.
        assert!(nftables::table_exists(Family::Ip, "t").expect("get table"));
        assert!(!nftables::table_exists(Family::Ip, "nope").expect("get table"));
        let mut chains = nftables::chains(Family::Ip, "t").expect("chains");
        chains.sort();
        assert_eq!(chains, vec!["fwd".to_string(), "post".to_string()]);
        assert!(
            nftables::chains(Family::Ip, "nope")
                .expect("chains")
                .is_empty()
        );
        assert_eq!(
            nftables::rule_comments(Family::Ip, "t", "post").expect("rules"),
            vec![None, Some("pods leaving".to_string()), None]
        );
        assert!(
            nftables::rule_comments(Family::Ip6, "t", "missing")
                .expect("rules")
                .is_empty()
        );
    });
}

/// All or nothing: a batch whose last change fails leaves no trace of its first ones, and the
/// error names the change and carries the kernel's errno.
#[test]
fn a_failing_batch_changes_nothing() {
    in_new_netns(|| {
        let mut b = Batch::new();
        b.add_table(Family::Ip, "keep");
        b.add_chain(Family::Ip, "keep", "c", Some(Hook::NatPostrouting));
        b.commit().expect("first batch");

        let mut b = Batch::new();
        b.add_table(Family::Ip, "new");
        b.flush_chain(Family::Ip, "keep", "c");
        b.delete_table(Family::Ip, "keep");
        b.delete_chain(Family::Ip, "new", "absent");
        let err = b.commit().expect_err("the last change must fail");
        assert!(err.is_not_found(), "{err}");
        assert!(
            err.to_string().contains("delete chain ip new absent"),
            "{err}"
        );
        let text = nft(&["list", "ruleset"]);
        assert!(
            text.contains("table ip keep") && !text.contains("table ip new"),
            "{text}"
        );
        assert!(text.contains("chain c"), "{text}");
    });
}

/// The replace patterns the programs rely on: add+delete+add of a table (netd), and
/// add chain + flush + add rule repeated (netd-cni) leave exactly one copy.
#[test]
fn replacing_is_idempotent() {
    in_new_netns(|| {
        let rule =
            Rule::new(vec![Match::from(net("10.1.0.0/16"))], Action::Accept).with_comment("one");
        for _ in 0..3 {
            let mut b = Batch::new();
            b.add_table(Family::Ip, "r");
            b.add_chain(Family::Ip, "r", "c", Some(Hook::FilterForward));
            b.flush_chain(Family::Ip, "r", "c");
            b.add_rule(Family::Ip, "r", "c", &rule);
            b.commit().expect("commit");
        }
        assert_eq!(
            nftables::rule_comments(Family::Ip, "r", "c").expect("rules"),
            vec![Some("one".to_string())]
        );
        for _ in 0..2 {
            let mut b = Batch::new();
            b.add_table(Family::Ip, "r");
            b.delete_table(Family::Ip, "r");
            b.add_table(Family::Ip, "r");
            b.add_chain(Family::Ip, "r", "d", None);
            b.commit().expect("replace");
        }
        assert_eq!(
            nftables::chains(Family::Ip, "r").expect("chains"),
            vec!["d".to_string()]
        );
        // Deleting what is absent, made unconditional by adding it first.
        for _ in 0..2 {
            let mut b = Batch::new();
            b.add_table(Family::Ip6, "gone");
            b.delete_table(Family::Ip6, "gone");
            b.commit().expect("delete");
        }
        assert!(!nftables::table_exists(Family::Ip6, "gone").expect("get"));
        assert!(Batch::new().commit().is_ok(), "an empty batch is a no-op");
    });
}
