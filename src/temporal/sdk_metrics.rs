//! The Temporal SDK's own metrics, through its Prometheus exporter: a worker's (task latencies,
//! schedule-to-start, slots, pollers, poll failures) and every client connection's requests
//! and long polls (`temporal_request_*`, `temporal_long_request_*`: the controller's starts,
//! describes and history long polls, the facade's reads).
//!
//! The exporter serves its registry on an address of its own; it is bound to a loopback port
//! and each process's `/metrics` relays it beside the operator's own figures, so one scrape
//! target per pod has everything.

use crate::temporal::error::TemporalError;
use std::{net::SocketAddr, sync::Arc, time::Duration};
use temporalio_common::telemetry::{
    PrometheusExporterOptions, TelemetryOptions,
    metrics::{CoreMeter, TemporalMeter},
    start_prometheus_metric_exporter, telemetry_init,
};

/// A running SDK exporter.
#[derive(Clone)]
pub struct SdkMetrics {
    meter: Arc<dyn CoreMeter>,
    address: SocketAddr,
    http: reqwest::Client,
}

impl SdkMetrics {
    /// Starts the exporter on a loopback port. Names follow Prometheus conventions: durations
    /// in seconds with a `_seconds` suffix, counters with `_total`, all prefixed `temporal_`.
    pub fn start() -> Result<Self, TemporalError> {
        let options = PrometheusExporterOptions::builder()
            .socket_addr(SocketAddr::from(([127, 0, 0, 1], 0)))
            .counters_total_suffix(true)
            .use_seconds_for_durations(true)
            .unit_suffix(true)
            .build();
        let started = start_prometheus_metric_exporter(options)
            .map_err(|e| TemporalError::Config(format!("SDK metrics exporter: {e:#}")))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| TemporalError::Config(format!("SDK metrics relay: {e}")))?;
        Ok(Self {
            meter: started.meter,
            address: started.bound_addr,
            http,
        })
    }

    /// Telemetry options that record into this exporter.
    pub fn telemetry(&self) -> TelemetryOptions {
        TelemetryOptions::builder()
            .metrics(self.meter.clone())
            .build()
    }

    /// A meter for a client connection, prefixed and labelled as the SDK does for its own
    /// metrics: requests, long polls and their failures (`temporal_request_*`,
    /// `temporal_long_request_*`).
    pub fn client_meter(&self) -> Option<TemporalMeter> {
        telemetry_init(self.telemetry())
            .map_err(|e| tracing::warn!(error = %e, "no client metrics"))
            .ok()?
            .get_temporal_metric_meter()
    }

    /// The exporter's current text exposition (empty if it cannot be read).
    pub async fn scrape(&self) -> String {
        let url = format!("http://{}/metrics", self.address);
        match self.http.get(url).send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the SDK's metrics");
                String::new()
            }
        }
    }
}
