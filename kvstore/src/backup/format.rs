//! The backup file's bytes: a magic line, length-prefixed [`BackupFrame`]s (a header,
//! record batches, the leases, the auth state, a trailer), zero padding to a multiple of
//! 512 bytes, and the SHA-256 of everything before it. etcdctl's `snapshot save` accepts
//! a download only when its size is a multiple of 512 plus 32 (where etcd's bbolt files
//! carry their SHA-256), so the padding puts the checksum where etcdctl looks for it.

use std::io::Read;

use prost::Message;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::proto::kvstorepb::{BackupFrame, backup_frame::Frame};

/// First bytes of every backup file.
pub const MAGIC: &[u8; 16] = b"kvstore-backup\n\0";
/// The layout version the header names.
pub const FORMAT: u32 = 1;
/// Bytes of the checksum at the end.
pub const DIGEST_BYTES: usize = 32;
/// The file before the checksum is a multiple of this.
const PAD_TO: u64 = 512;
/// The largest frame a reader accepts (a batch is about 1 MiB; one revision can be larger,
/// a transaction of many large values, but not this large).
const MAX_FRAME: u32 = 1 << 30;

/// Builds a backup's bytes frame by frame; [`Encoder::take`] hands out what is ready.
pub struct Encoder {
    hasher: Sha256,
    len: u64,
    buf: Vec<u8>,
}

impl Default for Encoder {
    fn default() -> Self {
        let mut e = Encoder {
            hasher: Sha256::new(),
            len: 0,
            buf: Vec::new(),
        };
        e.append(MAGIC);
        e
    }
}

impl Encoder {
    fn append(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
        self.buf.extend_from_slice(bytes);
    }

    /// Adds one frame.
    pub fn frame(&mut self, frame: Frame) -> Result<()> {
        let body = BackupFrame { frame: Some(frame) }.encode_to_vec();
        let len = u32::try_from(body.len())
            .ok()
            .filter(|l| *l <= MAX_FRAME)
            .ok_or_else(|| {
                Error::Io(std::io::Error::other(format!(
                    "a backup frame of {} bytes",
                    body.len()
                )))
            })?;
        self.append(&len.to_be_bytes());
        self.append(&body);
        Ok(())
    }

    /// Bytes buffered so far.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The bytes built since the last call.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// Pads and appends the checksum; returns the last bytes of the file.
    pub fn finish(mut self) -> Vec<u8> {
        let pad = (PAD_TO - self.len % PAD_TO) % PAD_TO;
        self.append(&vec![0; pad as usize]);
        let digest = self.hasher.finalize_reset();
        self.buf.extend_from_slice(&digest);
        self.buf
    }
}

/// Reads a backup's frames in order, checking the checksum at the end.
pub struct Decoder<R> {
    inner: std::io::Chain<std::io::Cursor<Vec<u8>>, R>,
    hasher: Sha256,
    /// The SHA-256 the file ends with, checked against the one computed (or not).
    check_hash: bool,
    done: bool,
    /// Bytes read so far.
    pub offset: u64,
}

impl<R: Read> Decoder<R> {
    /// Starts reading: refuses a file that is not a kvstore backup (naming an etcd bbolt
    /// snapshot as such).
    pub fn new(mut inner: R, check_hash: bool) -> Result<Decoder<R>> {
        let mut head = [0u8; 20];
        let got = read_full(&mut inner, &mut head)?;
        if got < MAGIC.len() || &head[..MAGIC.len()] != MAGIC {
            // A bbolt file starts with its meta page: a 16-byte page header, then the
            // magic 0xED0CDAED (little-endian).
            if got == head.len() && head[16..20] == 0xED0C_DAEDu32.to_le_bytes() {
                return Err(Error::Config(
                    "this is an etcd snapshot (a bbolt database), not a kvstore backup: restore it \
                     into etcd and copy the keys with `etcdctl make-mirror` (docs/kvstore.md, \
                     \"Backup and restore\")"
                        .into(),
                ));
            }
            return Err(Error::Config("not a kvstore backup file".into()));
        }
        let mut hasher = Sha256::new();
        hasher.update(MAGIC);
        // What was read past the magic is read again, through the hasher.
        let unread = std::io::Cursor::new(head[MAGIC.len()..got].to_vec());
        Ok(Decoder {
            inner: unread.chain(inner),
            hasher,
            check_hash,
            done: false,
            offset: MAGIC.len() as u64,
        })
    }

    /// The next frame; `None` after the trailer (the checksum then checked).
    pub fn next_frame(&mut self) -> Result<Option<Frame>> {
        if self.done {
            return Ok(None);
        }
        let mut len = [0u8; 4];
        if self.read_hashed(&mut len)? < len.len() {
            return Err(Error::Corrupt(
                "the backup file ends before its trailer (truncated?)".into(),
            ));
        }
        let len = u32::from_be_bytes(len);
        if len > MAX_FRAME {
            return Err(Error::Corrupt(format!(
                "a backup frame of {len} bytes at offset {}",
                self.offset - 4
            )));
        }
        let mut body = Vec::new();
        let got = (&mut self.inner)
            .take(u64::from(len))
            .read_to_end(&mut body)?;
        self.hasher.update(&body);
        self.offset += got as u64;
        if got < len as usize {
            return Err(Error::Corrupt(
                "the backup file ends in the middle of a frame (truncated?)".into(),
            ));
        }
        let frame = BackupFrame::decode(body.as_slice())?
            .frame
            .ok_or_else(|| Error::Corrupt("an empty backup frame".into()))?;
        if matches!(frame, Frame::Trailer(_)) {
            self.done = true;
            self.check_end()?;
        }
        Ok(Some(frame))
    }

    /// After the trailer: zero padding, then the checksum of all before it.
    fn check_end(&mut self) -> Result<()> {
        let mut rest = Vec::new();
        (&mut self.inner)
            .take(PAD_TO + DIGEST_BYTES as u64 + 1)
            .read_to_end(&mut rest)?;
        if rest.len() < DIGEST_BYTES || rest.len() > PAD_TO as usize + DIGEST_BYTES {
            return Err(Error::Corrupt(format!(
                "{} bytes after the backup's last frame, where padding and a checksum belong",
                rest.len()
            )));
        }
        let (pad, digest) = rest.split_at(rest.len() - DIGEST_BYTES);
        self.hasher.update(pad);
        let computed = self.hasher.finalize_reset();
        if self.check_hash && computed.as_slice() != digest {
            return Err(Error::Corrupt(
                "the backup's SHA-256 does not match its contents (damaged file?)".into(),
            ));
        }
        if pad.iter().any(|b| *b != 0) {
            return Err(Error::Corrupt("the backup's padding is not zeros".into()));
        }
        Ok(())
    }

    fn read_hashed(&mut self, buf: &mut [u8]) -> Result<usize> {
        let got = read_full(&mut self.inner, buf)?;
        self.hasher.update(&buf[..got]);
        self.offset += got as u64;
        Ok(got)
    }
}

/// Checks the SHA-256 at the end of the file at `path` against the bytes before it (a
/// first pass, so a damaged file is named as such before any frame is decoded).
pub fn verify_digest(path: &std::path::Path) -> Result<()> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    if len < (MAGIC.len() + DIGEST_BYTES) as u64 {
        return Err(Error::Corrupt(format!(
            "a backup file of {len} bytes (truncated?)"
        )));
    }
    let mut hasher = Sha256::new();
    let body = len - DIGEST_BYTES as u64;
    let copied = std::io::copy(&mut (&mut file).take(body), &mut hasher)?;
    let mut digest = [0u8; DIGEST_BYTES];
    if copied != body || read_full(&mut file, &mut digest)? != DIGEST_BYTES {
        return Err(Error::Corrupt("the backup file changed while read".into()));
    }
    if hasher.finalize().as_slice() != digest {
        return Err(Error::Corrupt(
            "the backup's SHA-256 does not match its contents (damaged or truncated file?)".into(),
        ));
    }
    Ok(())
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(got)
}
