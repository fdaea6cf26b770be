//! The device side of the kernel block device frontends without the kernel: the nbd
//! frontend's forwarding loop (`kernel_nbd::serve_kernel`) is driven over a socket pair
//! by the test, playing the kernel's NBD client, in front of real engine and replica
//! processes. The engine is SIGKILLed, requests are made while none runs, and another is
//! started under a newer epoch at another socket: every request is answered without an
//! error, by the new engine, and qemu-io reads back what the acknowledged writes wrote.
//! (Requests in flight at the moment of the kill: `tests/block_device.rs`, under fio.)

use std::sync::Arc;

use shorthorn_dataplane::device::kernel_nbd::serve_kernel;
use shorthorn_dataplane::device::upstream::{EndpointFile, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::testkit::{Cluster, qemu_io};

const REQUEST_MAGIC: u32 = 0x2560_9513;
const REPLY_MAGIC: u32 = 0x6744_6698;

fn request(kind: u16, handle: u64, offset: u64, length: u32) -> Vec<u8> {
    let mut frame = Vec::with_capacity(28);
    frame.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
    frame.extend_from_slice(&0u16.to_be_bytes());
    frame.extend_from_slice(&kind.to_be_bytes());
    frame.extend_from_slice(&handle.to_be_bytes());
    frame.extend_from_slice(&offset.to_be_bytes());
    frame.extend_from_slice(&length.to_be_bytes());
    frame
}

/// Reads one simple reply; returns (handle, error, data for a read of `read_len`).
async fn reply(
    r: &mut (impl AsyncReadExt + Unpin),
    read_lengths: &std::collections::HashMap<u64, usize>,
) -> (u64, u32, Vec<u8>) {
    let mut head = [0u8; 16];
    r.read_exact(&mut head).await.expect("reply header");
    assert_eq!(
        u32::from_be_bytes(head[0..4].try_into().unwrap()),
        REPLY_MAGIC
    );
    let error = u32::from_be_bytes(head[4..8].try_into().unwrap());
    let handle = u64::from_be_bytes(head[8..16].try_into().unwrap());
    let mut data = vec![
        0u8;
        if error == 0 {
            read_lengths.get(&handle).copied().unwrap_or(0)
        } else {
            0
        }
    ];
    r.read_exact(&mut data).await.expect("reply data");
    (handle, error, data)
}

#[test]
fn requests_made_while_the_engine_is_dead_are_answered_by_the_next_engine() {
    let c = Cluster::new(16 << 20);
    let _r0 = c.replica(0);
    let _r1 = c.replica(1);
    let mut e1 = c.engine(1, &[0, 1]);
    let endpoint = c.path("endpoint");
    std::fs::write(&endpoint, c.nbd_uri(1)).expect("endpoint file");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let second = runtime.block_on(async {
        let upstream: Arc<Upstream> = Upstream::start(EndpointFile(endpoint.clone())).await;
        assert_eq!(upstream.size(), 16 << 20);
        let (kernel, device) = tokio::net::UnixStream::pair().expect("socket pair");
        let (dr, dw) = device.into_split();
        let served = tokio::spawn(serve_kernel(dr, dw, upstream.clone()));
        let (mut kr, mut kw) = kernel.into_split();
        let mut lengths = std::collections::HashMap::new();

        // 1 MiB of 0x5a at 0, then FLUSH: both answered by the first engine.
        let mut frame = request(1, 1, 0, 1 << 20);
        frame.extend(std::iter::repeat_n(0x5a, 1 << 20));
        kw.write_all(&frame).await.unwrap();
        kw.write_all(&request(3, 2, 0, 0)).await.unwrap();
        for _ in 0..2 {
            let (handle, error, _) = reply(&mut kr, &lengths).await;
            assert_eq!(error, 0, "request {handle} failed on the first engine");
        }

        // The engine dies; the next requests wait for its successor.
        e1.kill();
        let mut frame = request(1, 3, 2 << 20, 1 << 20);
        frame.extend(std::iter::repeat_n(0xa5, 1 << 20));
        kw.write_all(&frame).await.unwrap();
        kw.write_all(&request(3, 4, 0, 0)).await.unwrap();
        kw.write_all(&request(0, 5, 0, 4096)).await.unwrap();
        lengths.insert(5, 4096);
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let e2 = tokio::task::block_in_place(|| c.engine(2, &[0, 1]));
        std::fs::write(&endpoint, c.nbd_uri(2)).expect("endpoint file");
        let mut answered = std::collections::BTreeMap::new();
        for _ in 0..3 {
            let (handle, error, data) = reply(&mut kr, &lengths).await;
            assert_eq!(
                error, 0,
                "request {handle} failed across the engine restart"
            );
            answered.insert(handle, data);
        }
        assert_eq!(answered.keys().copied().collect::<Vec<_>>(), vec![3, 4, 5]);
        assert!(
            answered[&5].iter().all(|b| *b == 0x5a),
            "the read after the restart"
        );
        assert!(upstream.connections() >= 2, "the device never reconnected");

        kw.write_all(&request(2, 6, 0, 0)).await.unwrap();
        served
            .await
            .expect("join")
            .expect("the forwarding ended cleanly at DISC");
        e2
    });
    qemu_io(
        &c.nbd_uri(2),
        &[
            "read -P 0x5a 0 1048576",
            "read -P 0 1048576 1048576",
            "read -P 0xa5 2097152 1048576",
        ],
    );
    drop(second);
}
