//! Activity options: the seed's retry policies, exactly, and our timeouts.

use std::time::Duration;
use temporalio_common::RetryPolicy;
use temporalio_sdk::{ActivityCancellationType, ActivityOptions, WorkflowCancellationToken};

/// `store_image_metadata`: 3 attempts, 1 s initial interval, 10 s maximum, x2.0.
pub fn store_metadata_retry() -> RetryPolicy {
    RetryPolicy::builder()
        .maximum_attempts(3)
        .initial_interval(Duration::from_secs(1))
        .maximum_interval(Duration::from_secs(10))
        .backoff_coefficient(2.0)
        .build()
}

/// `run_similarity_search`: 3 attempts, 2 s initial interval, 20 s maximum, x2.0.
pub fn similarity_search_retry() -> RetryPolicy {
    RetryPolicy::builder()
        .maximum_attempts(3)
        .initial_interval(Duration::from_secs(2))
        .maximum_interval(Duration::from_secs(20))
        .backoff_coefficient(2.0)
        .build()
}

/// Options of `store_image_metadata`: one attempt may take 30 s. A cancellation waits for the
/// attempt to really end, so a document it wrote is reported as stored (`metadata_stored`
/// never says false for a document that exists).
pub fn store_metadata_options(cancel: WorkflowCancellationToken) -> ActivityOptions {
    ActivityOptions::with_start_to_close_timeout(Duration::from_secs(30))
        .retry_policy(store_metadata_retry())
        .cancellation_token(cancel)
        .cancellation_type(ActivityCancellationType::WaitCancellationCompleted)
        .build()
}

/// Options of `run_similarity_search`: one attempt may take 2 minutes; it heartbeats every
/// second, so a dead worker or a cancellation is noticed within 10 s; the workflow reports
/// `cancelled` once the attempt acknowledged the cancellation.
pub fn similarity_search_options(cancel: WorkflowCancellationToken) -> ActivityOptions {
    ActivityOptions::with_start_to_close_timeout(Duration::from_secs(120))
        .heartbeat_timeout(Duration::from_secs(10))
        .retry_policy(similarity_search_retry())
        .cancellation_token(cancel)
        .cancellation_type(ActivityCancellationType::WaitCancellationCompleted)
        .build()
}

/// Options of `forget_catalog_image`: retried (every minute at most) until the catalog's owner
/// has removed the deleted job's images; one attempt may take 30 s.
pub fn forget_catalog_image_options() -> ActivityOptions {
    ActivityOptions::with_start_to_close_timeout(Duration::from_secs(30))
        .retry_policy(
            RetryPolicy::builder()
                .initial_interval(Duration::from_secs(1))
                .maximum_interval(Duration::from_secs(60))
                .backoff_coefficient(2.0)
                .build(),
        )
        .build()
}
