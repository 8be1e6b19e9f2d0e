fn main() {
    eprintln!("netd: not built yet");
    std::process::exit(2);
}
