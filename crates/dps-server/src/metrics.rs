//! The Prometheus registry (`prometheus-client`): the domain's [`Observer`] port, the TLS and
//! connection counters the accept loops record, and the store timing decorator
//! ([`TimedStore`]). Names and labels: docs/operations.md, "Metrics".

use std::sync::Arc;
use std::time::{Duration, Instant};

use dps_core::device::Transport;
use dps_core::model::{IdScope, Instance};
use dps_core::observe::{Api, AttestationResult, Observer};
use dps_core::store::{DocWrite, DocumentStore, InstanceWrite, Kind, Precondition, RawPage, StoreError};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceResult {
    instance: String,
    protocol: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Assignment {
    instance: String,
    protocol: String,
    hub: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Refusal {
    instance: String,
    api: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    protocol: String,
    api: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Handshake {
    listener: String,
    version: String,
    suite: String,
    resumed: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerReason {
    listener: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    operation: String,
    result: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency buckets from 0.5 ms to about 16 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Every metric the server exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    registration_attempts: Family<InstanceResult, Counter>,
    device_assignments: Family<Assignment, Counter>,
    attestation_attempts: Family<InstanceResult, Counter>,
    network_refusals: Family<Refusal, Counter>,
    request_duration: Histograms<RequestLabels>,
    handshakes: Family<Handshake, Counter>,
    handshake_failures: Family<ListenerReason, Counter>,
    connections_open: Family<ListenerLabel, Gauge>,
    connections_refused: Family<ListenerReason, Counter>,
    store_duration: Histograms<StoreLabels>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("opendps");
        let m = Metrics {
            registration_attempts: Family::default(),
            device_assignments: Family::default(),
            attestation_attempts: Family::default(),
            network_refusals: Family::default(),
            request_duration: Family::new_with_constructor(latency),
            handshakes: Family::default(),
            handshake_failures: Family::default(),
            connections_open: Family::default(),
            connections_refused: Family::default(),
            store_duration: Family::new_with_constructor(latency),
            registry: Registry::default(),
        };
        registry.register(
            "registration_attempts",
            "Device registrations attempted, by DPS instance, protocol and result (assigned, failed, disabled, refused)",
            m.registration_attempts.clone(),
        );
        registry.register(
            "device_assignments",
            "Devices assigned to an IoT hub, by DPS instance, protocol and hub",
            m.device_assignments.clone(),
        );
        registry.register(
            "attestation_attempts",
            "Device credentials checked, by DPS instance, protocol and result (success, challenge, failure)",
            m.attestation_attempts.clone(),
        );
        registry.register(
            "network_refusals",
            "Requests refused by an instance's publicNetworkAccess or ipFilterRules, by instance, API and reason",
            m.network_refusals.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to answer a request, by protocol, API and status",
            m.request_duration.clone(),
        );
        registry.register(
            "tls_handshakes",
            "Completed TLS handshakes, by listener, version, cipher suite and resumption",
            m.handshakes.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "Refused or failed TLS handshakes, by listener and reason",
            m.handshake_failures.clone(),
        );
        registry.register("connections_open", "Open connections, by listener", m.connections_open.clone());
        registry.register(
            "connections_refused",
            "Connections closed at once, by listener and reason (max_connections, max_connections_per_source, handshakes_per_second_per_source)",
            m.connections_refused.clone(),
        );
        registry.register(
            "store_operation_duration_seconds",
            "Time of a store operation, by operation and result",
            m.store_duration.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    pub(crate) fn handshake(&self, listener: &str, facts: &dps_core::tls::HandshakeFacts) {
        let n = &facts.negotiated;
        self.handshakes
            .get_or_create(&Handshake {
                listener: listener.to_owned(),
                version: n.version.to_string(),
                suite: n.cipher_suite_name().into_owned(),
                resumed: n.resumed.to_string(),
            })
            .inc();
    }

    pub(crate) fn handshake_failure(&self, listener: &str, reason: &str) {
        // OpenSSL's reason strings are a fixed set; the cut bounds anything else.
        let reason: String = reason.chars().take(64).collect();
        self.handshake_failures.get_or_create(&ListenerReason { listener: listener.to_owned(), reason }).inc();
    }

    pub(crate) fn connection_refused(&self, listener: &str, reason: &str) {
        self.connections_refused
            .get_or_create(&ListenerReason { listener: listener.to_owned(), reason: reason.to_owned() })
            .inc();
    }

    /// Counts a connection open until the returned guard is dropped.
    pub(crate) fn connection_open(self: &Arc<Self>, listener: &str) -> OpenConnection {
        let gauge = self.connections_open.get_or_create(&ListenerLabel { listener: listener.to_owned() }).clone();
        gauge.inc();
        OpenConnection(gauge)
    }

    fn store(&self, operation: &'static str, ok: bool, elapsed: Duration) {
        let result = if ok { "ok" } else { "error" };
        self.store_duration
            .get_or_create(&StoreLabels { operation: operation.to_owned(), result: result.to_owned() })
            .observe(elapsed.as_secs_f64());
    }
}

/// One open connection, counted by `opendps_connections_open` while it lives.
#[derive(Debug)]
pub(crate) struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn ir(instance: &str, transport: Transport, result: &str) -> InstanceResult {
    InstanceResult { instance: instance.to_owned(), protocol: transport.as_str().to_owned(), result: result.to_owned() }
}

impl Observer for Metrics {
    fn attestation_attempt(&self, instance: &str, transport: Transport, result: AttestationResult) {
        self.attestation_attempts.get_or_create(&ir(instance, transport, result.as_str())).inc();
    }

    fn registration_attempt(&self, instance: &str, transport: Transport, result: &str) {
        self.registration_attempts.get_or_create(&ir(instance, transport, result)).inc();
    }

    fn device_assignment(&self, instance: &str, transport: Transport, hub: &str) {
        self.device_assignments
            .get_or_create(&Assignment {
                instance: instance.to_owned(),
                protocol: transport.as_str().to_owned(),
                hub: hub.to_owned(),
            })
            .inc();
    }

    fn network_refusal(&self, instance: &str, api: Api, reason: &str) {
        self.network_refusals
            .get_or_create(&Refusal {
                instance: instance.to_owned(),
                api: api.as_str().to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    fn request(&self, transport: Transport, api: Api, status: u16, elapsed: Duration) {
        self.request_duration
            .get_or_create(&RequestLabels {
                protocol: transport.as_str().to_owned(),
                api: api.as_str().to_owned(),
                status: status.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }
}

/// A store backend with every operation timed into `opendps_store_operation_duration_seconds`.
#[derive(Debug)]
pub struct TimedStore<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> TimedStore<S> {
    pub fn new(inner: S, metrics: Arc<Metrics>) -> Self {
        TimedStore { inner, metrics }
    }

    async fn time<T>(
        &self,
        operation: &'static str,
        f: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let r = f.await;
        self.metrics.store(operation, r.is_ok(), started.elapsed());
        r
    }
}

#[async_trait::async_trait]
impl<S: DocumentStore> DocumentStore for TimedStore<S> {
    async fn instances(&self) -> Result<Vec<Instance>, StoreError> {
        self.time("instances", self.inner.instances()).await
    }
    async fn instance(&self, name: &str) -> Result<Option<Instance>, StoreError> {
        self.time("instance", self.inner.instance(name)).await
    }
    async fn instance_by_scope(&self, scope: &IdScope) -> Result<Option<Instance>, StoreError> {
        self.time("instance_by_scope", self.inner.instance_by_scope(scope)).await
    }
    async fn write_instances(&self, writes: &[InstanceWrite]) -> Result<(), StoreError> {
        self.time("write_instances", self.inner.write_instances(writes)).await
    }
    async fn delete_instance(&self, name: &str) -> Result<(), StoreError> {
        self.time("delete_instance", self.inner.delete_instance(name)).await
    }
    async fn instances_version(&self) -> Result<u64, StoreError> {
        self.time("instances_version", self.inner.instances_version()).await
    }
    async fn groups_version(&self) -> Result<u64, StoreError> {
        self.time("groups_version", self.inner.groups_version()).await
    }
    async fn get_doc(&self, kind: Kind, instance: &str, id: &str) -> Result<Option<String>, StoreError> {
        self.time("get", self.inner.get_doc(kind, instance, id)).await
    }
    async fn put_doc(
        &self,
        kind: Kind,
        instance: &str,
        doc: DocWrite<'_>,
        pre: Precondition<'_>,
    ) -> Result<(), StoreError> {
        self.time("put", self.inner.put_doc(kind, instance, doc, pre)).await
    }
    async fn delete_doc(&self, kind: Kind, instance: &str, id: &str, pre: Precondition<'_>) -> Result<(), StoreError> {
        self.time("delete", self.inner.delete_doc(kind, instance, id, pre)).await
    }
    async fn page_docs(
        &self,
        kind: Kind,
        instance: &str,
        parent: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<RawPage, StoreError> {
        self.time("page", self.inner.page_docs(kind, instance, parent, after, limit)).await
    }
}
