//! Shared harness of the black-box tests: [`previewd_kube::testing`] (a client for the
//! local control plane of `testenv/up`, CRD installation, throwaway namespaces, an
//! operator scoped to one namespace), plus a client that counts its writes.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use kube::Client;
use kube::client::ClientBuilder;
pub use previewd_kube::testing::*;

/// Counts the write requests (anything but GET, HEAD and watches) a client sends.
#[derive(Clone, Default)]
pub struct WriteCounter(pub Arc<AtomicUsize>);

impl WriteCounter {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// A client whose writes are counted.
pub async fn counting_client() -> (Client, WriteCounter) {
    let counter = WriteCounter::default();
    let c2 = counter.clone();
    let layer = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        let m = req.method();
        if m != http::Method::GET && m != http::Method::HEAD {
            c2.0.fetch_add(1, Ordering::SeqCst);
            eprintln!("write: {} {}", req.method(), req.uri());
        }
        req
    });
    let client = ClientBuilder::try_from(config().await)
        .expect("client builder")
        .with_layer(&layer)
        .build();
    (client, counter)
}

/// A client that counts the API server's `409 Conflict` answers to it.
pub async fn conflict_counting_client() -> (Client, WriteCounter) {
    let counter = WriteCounter::default();
    let c2 = counter.clone();
    let layer = tower::util::MapResponseLayer::new(
        move |res: http::Response<Box<kube::client::DynBody>>| {
            if res.status() == http::StatusCode::CONFLICT {
                c2.0.fetch_add(1, Ordering::SeqCst);
            }
            res
        },
    );
    let client = ClientBuilder::try_from(config().await)
        .expect("client builder")
        .with_layer(&layer)
        .build();
    (client, counter)
}
