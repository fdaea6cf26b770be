use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;

use crate::testkit::{Cluster, run, run_ok};

/// A hand-driven NBD client: negotiates with OPT_GO and sends raw requests.
struct RawNbd(UnixStream);

impl RawNbd {
    fn go(c: &Cluster, export: &str) -> Result<RawNbd, u32> {
        let mut s = UnixStream::connect(c.nbd_socket(1)).expect("connect");
        let mut hello = [0u8; 18];
        s.read_exact(&mut hello).expect("hello");
        assert_eq!(&hello[0..16], b"NBDMAGICIHAVEOPT");
        s.write_all(&3u32.to_be_bytes()).expect("client flags");
        let mut opt = b"IHAVEOPT".to_vec();
        opt.extend_from_slice(&7u32.to_be_bytes());
        opt.extend_from_slice(&((4 + export.len() + 2) as u32).to_be_bytes());
        opt.extend_from_slice(&(export.len() as u32).to_be_bytes());
        opt.extend_from_slice(export.as_bytes());
        opt.extend_from_slice(&0u16.to_be_bytes());
        s.write_all(&opt).expect("opt go");
        loop {
            let mut h = [0u8; 20];
            s.read_exact(&mut h).expect("option reply");
            let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
            let mut data = vec![0u8; len as usize];
            s.read_exact(&mut data).expect("option data");
            match kind {
                1 => return Ok(RawNbd(s)),
                3 => continue,
                e => return Err(e),
            }
        }
    }

    /// Sends one request and returns the error code of its simple reply.
    fn request(&mut self, kind: u16, offset: u64, length: u32, payload: &[u8]) -> u32 {
        let mut r = 0x2560_9513u32.to_be_bytes().to_vec();
        r.extend_from_slice(&0u16.to_be_bytes());
        r.extend_from_slice(&kind.to_be_bytes());
        r.extend_from_slice(&42u64.to_be_bytes());
        r.extend_from_slice(&offset.to_be_bytes());
        r.extend_from_slice(&length.to_be_bytes());
        r.extend_from_slice(payload);
        self.0.write_all(&r).expect("request");
        let mut h = [0u8; 16];
        self.0.read_exact(&mut h).expect("reply");
        assert_eq!(u32::from_be_bytes(h[0..4].try_into().unwrap()), 0x6744_6698);
        assert_eq!(u64::from_be_bytes(h[8..16].try_into().unwrap()), 42);
        let err = u32::from_be_bytes(h[4..8].try_into().unwrap());
        if err == 0 && kind == 0 {
            let mut data = vec![0u8; length as usize];
            self.0.read_exact(&mut data).expect("read data");
        }
        err
    }
}

/// Requests past the export end get EINVAL (read, trim) or ENOSPC (write, write zeroes),
/// an unknown command gets EINVAL, an unknown export is refused, garbage closes only its
/// own connection, and nbdinfo --list shows the export.
#[test]
fn nbd_requests_out_of_range_or_malformed_get_nbd_errors() {
    let size: u64 = 8 << 20;
    let c = Cluster::new(size);
    let _r0 = c.replica(0);
    let _e = c.engine(1, &[0]);
    assert_eq!(RawNbd::go(&c, "nope").err(), Some((1 << 31) + 6));
    let mut n = RawNbd::go(&c, "vol").expect("go");
    assert_eq!(n.request(0, size - 4096, 4096, &[]), 0);
    assert_eq!(n.request(0, size - 4096, 8192, &[]), 22);
    assert_eq!(n.request(0, u64::MAX - 10, 4096, &[]), 22);
    assert_eq!(n.request(1, size, 512, &[7u8; 512]), 28);
    assert_eq!(n.request(1, size - 512, 512, &[7u8; 512]), 0);
    assert_eq!(n.request(6, size - 512, 1024, &[]), 28);
    assert_eq!(n.request(4, size, 4096, &[]), 22);
    assert_eq!(n.request(99, 0, 0, &[]), 22);
    assert_eq!(n.request(3, 0, 0, &[]), 0);
    n.0.write_all(&[0xde; 28]).expect("garbage");
    let mut b = [0u8; 1];
    assert_eq!(
        n.0.read(&mut b).unwrap_or(0),
        0,
        "garbage must close the connection"
    );
    let out = run_ok(Command::new("nbdinfo").arg("--list").arg(c.nbd_uri(1)));
    assert!(out.contains("vol"), "{out}");
    let out = run(Command::new("qemu-io")
        .args(["-f", "raw", "-c", "read -P 0x07 8388096 512"])
        .arg(c.nbd_uri(1)));
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("failed"));
}
