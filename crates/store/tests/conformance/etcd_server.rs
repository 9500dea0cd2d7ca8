//! The etcd backend under test, on a throw-away etcd from the testkit.

use std::sync::Arc;
use std::time::Duration;

use skiff_store::{EtcdOptions, EtcdStore};
use skiff_testkit::EtcdServer;

use crate::Fixture;

pub async fn open_etcd() -> Fixture {
    let server = tokio::task::spawn_blocking(EtcdServer::start)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    let store = EtcdStore::connect(EtcdOptions {
        endpoints: vec![server.endpoint()],
        progress_interval: Duration::from_millis(200),
    })
    .await
    .unwrap();
    Fixture {
        store: Arc::new(store),
        _keep: Box::new(server),
    }
}
