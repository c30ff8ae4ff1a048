//! Completion notifications, the controller's side. The job's status is the outbox: the write
//! that finishes a job records one `Pending` delivery per sink (`status.notifications`), each
//! delivery's outcome is written as it happens, and a finished job with a delivery pending stays
//! in the controller's cache (it is not settled) until none is, so a controller that restarts
//! between a job's end and its delivery makes it: at least once, the CloudEvent's `id` the same
//! on every attempt. A failed attempt is tried again with backoff (or after the sink's
//! `Retry-After`) until `NOTIFY_MAX_ATTEMPTS`; the job itself is never held or changed by it
//! (a TTL after finishing waits for the outbox to empty). A sink that keeps failing shows in the
//! `Notified` condition, a `NotificationFailed` event and `controller_notifications_total`.

use super::{
    context::Context,
    error::Result,
    status::set_condition,
    write::{until, write_status},
};
use crate::{
    crd::{
        CONDITION_NOTIFIED, DeliveryState, ImageJob, ImageJobStatus, Notification, NotificationSink,
    },
    notify::{DeliveryError, Notifier, completion_event},
};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    ResourceExt,
    runtime::{controller::Action, events::EventType},
};
use std::time::Duration;
use tracing::{info, warn};

/// The first retry's delay; each further one doubles, up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_secs(1);
/// The longest delay between two attempts.
const MAX_DELAY: Duration = Duration::from_secs(300);

/// For the write that finishes a job: its outbox, a `Pending` delivery per configured sink
/// (none when nothing is configured, or the job was already finished).
pub(super) fn outbox(
    job: &ImageJob,
    current: &ImageJobStatus,
    desired: &mut ImageJobStatus,
    ctx: &Context,
) {
    let Some(notifier) = &ctx.settings.notifier else {
        return;
    };
    if !desired.phase.is_terminal()
        || current.phase.is_terminal()
        || desired.notifications.is_some()
    {
        return;
    }
    let event_id = format!("{}.{}", job.uid().unwrap_or_default(), desired.attempt());
    let deliveries: Vec<_> = (notifier.sinks(job).into_iter())
        .map(|sink| Notification {
            sink,
            event_id: event_id.clone(),
            state: DeliveryState::Pending,
            failures: 0,
            last_error: None,
            next_attempt_time: None,
            delivered_time: None,
        })
        .collect();
    if !deliveries.is_empty() {
        desired.notifications = Some(Box::new(deliveries));
    }
}

/// Makes the deliveries of a finished job's outbox that are due and writes how each went; when
/// to look again while some are pending, `None` once none is.
pub(super) async fn deliver_due(job: &ImageJob, ctx: &Context) -> Result<Option<Action>> {
    if !job.notification_pending() {
        return Ok(None);
    }
    let current = job.status.clone().unwrap_or_default();
    let mut deliveries = current.deliveries().to_vec();
    let now = Timestamp::now();
    let mut events = Vec::new();
    for delivery in deliveries.iter_mut().filter(|d| is_due(d, now)) {
        let outcome = attempt(job, &current, delivery, ctx).await;
        record(delivery, outcome, now, ctx, &mut events);
    }
    let mut desired = current.clone();
    desired.notifications = Some(Box::new(deliveries));
    report(&mut desired, &Time(now));
    if write_status(job, &current, &desired, ctx).await? {
        for (reason, note) in events {
            ctx.event(job, EventType::Warning, reason, note).await;
        }
    }
    let next = (desired.deliveries().iter())
        .filter(|d| d.state == DeliveryState::Pending)
        .map(|d| d.next_attempt_time.as_ref().map_or(now, |t| t.0))
        .min();
    Ok(next.map(|at| Action::requeue(until(at))))
}

/// Whether `delivery` is pending and its next attempt is due.
fn is_due(delivery: &Notification, now: Timestamp) -> bool {
    delivery.state == DeliveryState::Pending
        && (delivery.next_attempt_time.as_ref()).is_none_or(|at| at.0 <= now)
}

/// What one attempt came to.
enum Outcome {
    Delivered,
    /// The sink is not allowed or not configured: never sent.
    NotSent(String),
    Failed(DeliveryError),
}

/// One delivery attempt of `job`'s end to `delivery`'s sink.
async fn attempt(
    job: &ImageJob,
    status: &ImageJobStatus,
    delivery: &Notification,
    ctx: &Context,
) -> Outcome {
    let Some(notifier) = &ctx.settings.notifier else {
        return Outcome::NotSent("notifications are no longer configured".into());
    };
    let url = match notifier.url(delivery.sink, job) {
        Ok(url) => url,
        Err(e) => return Outcome::NotSent(e.to_string()),
    };
    let event = completion_event(job, status, &delivery.event_id);
    let body = serde_json::to_vec(&event).unwrap_or_default();
    match notifier.deliver(&url, body).await {
        Ok(()) => Outcome::Delivered,
        Err(e) => Outcome::Failed(e),
    }
}

/// Records `outcome` in `delivery`, counts it, and queues the event a failure makes.
fn record(
    delivery: &mut Notification,
    outcome: Outcome,
    now: Timestamp,
    ctx: &Context,
    events: &mut Vec<(&'static str, String)>,
) {
    let sink = sink_name(delivery.sink);
    let max_failures = (ctx.settings.notifier.as_deref()).map_or(1, max_failures);
    match outcome {
        Outcome::Delivered => {
            info!(event_id = %delivery.event_id, sink, "notification delivered");
            ctx.metrics.notification("delivered");
            delivery.state = DeliveryState::Delivered;
            delivery.delivered_time = Some(Time(now));
            delivery.next_attempt_time = None;
        }
        Outcome::NotSent(reason) => {
            warn!(event_id = %delivery.event_id, sink, %reason, "notification not sent");
            ctx.metrics.notification("refused");
            delivery.state = DeliveryState::Refused;
            delivery.next_attempt_time = None;
            events.push(("NotificationRefused", format!("{sink} sink: {reason}")));
            delivery.last_error = Some(reason);
        }
        Outcome::Failed(error) => {
            delivery.failures = delivery.failures.saturating_add(1);
            let message = error.to_string();
            let retry_after = match &error {
                DeliveryError::Retryable { retry_after, .. } => Some(*retry_after),
                DeliveryError::Rejected(_) => None,
            };
            match retry_after {
                Some(retry_after) if delivery.failures < max_failures => {
                    let delay = retry_after.unwrap_or_else(|| backoff(delivery.failures));
                    warn!(event_id = %delivery.event_id, sink, error = %message, ?delay, "notification failed; trying again");
                    ctx.metrics.notification("retried");
                    delivery.next_attempt_time = Some(Time(after(now, delay)));
                }
                _ => {
                    warn!(event_id = %delivery.event_id, sink, error = %message, "notification given up");
                    ctx.metrics.notification("failed");
                    delivery.state = DeliveryState::Failed;
                    delivery.next_attempt_time = None;
                    let failures = delivery.failures;
                    events.push((
                        "NotificationFailed",
                        format!("{sink} sink: given up after {failures} attempts: {message}"),
                    ));
                }
            }
            delivery.last_error = Some(message);
        }
    }
}

/// `delay` after `now`, rounded up to a whole second: the status keeps whole seconds, and the
/// next attempt must not come before the delay is over.
fn after(now: Timestamp, delay: Duration) -> Timestamp {
    use k8s_openapi::jiff::{RoundMode, TimestampRound, Unit};
    let next = now.checked_add(delay).unwrap_or(now);
    let whole = TimestampRound::new()
        .smallest(Unit::Second)
        .mode(RoundMode::Ceil);
    next.round(whole).unwrap_or(next)
}

/// Failed attempts after which a delivery is given up.
fn max_failures(notifier: &Notifier) -> u32 {
    notifier.settings().max_failures.max(1)
}

/// The delay after the `failures`-th failed attempt: 1 s, doubling, at most 5 minutes.
fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY)
}

fn sink_name(sink: NotificationSink) -> &'static str {
    match sink {
        NotificationSink::Operator => "operator",
        NotificationSink::Job => "job",
    }
}

/// Sets the `Notified` condition from the deliveries.
fn report(status: &mut ImageJobStatus, now: &Time) {
    let deliveries = status.deliveries().to_vec();
    let bad = deliveries
        .iter()
        .find(|d| matches!(d.state, DeliveryState::Failed | DeliveryState::Refused));
    let failing = deliveries
        .iter()
        .find(|d| d.state == DeliveryState::Pending && d.failures > 0);
    let (value, reason, message) = if let Some(d) = bad {
        let reason = match d.state {
            DeliveryState::Refused => "SinkNotAllowed",
            _ => "SinkFailed",
        };
        let error = d.last_error.clone().unwrap_or_default();
        (
            "False",
            reason,
            format!("{} sink: {error}", sink_name(d.sink)),
        )
    } else if let Some(d) = failing {
        let error = d.last_error.clone().unwrap_or_default();
        let message = format!(
            "{} sink failed {} times, last: {error}; trying again",
            sink_name(d.sink),
            d.failures
        );
        ("False", "Retrying", message)
    } else if deliveries
        .iter()
        .all(|d| d.state == DeliveryState::Delivered)
    {
        (
            "True",
            "Delivered",
            "every sink accepted the notification".to_owned(),
        )
    } else {
        return;
    };
    set_condition(
        &mut status.conditions,
        CONDITION_NOTIFIED,
        value,
        reason,
        &message,
        now,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_attempt_is_never_due_before_its_delay_even_in_whole_seconds() {
        let now: Timestamp = "2026-12-04T15:06:36.274Z".parse().unwrap();
        let next = after(now, Duration::from_secs(1));
        assert_eq!(next.to_string(), "2026-12-04T15:06:38Z");
    }

    #[test]
    fn the_backoff_doubles_from_a_second_up_to_five_minutes() {
        let delays: Vec<_> = [1, 2, 3, 9, 10, 40].map(backoff).to_vec();
        assert_eq!(
            delays,
            [1, 2, 4, 256, 300, 300].map(Duration::from_secs).to_vec()
        );
    }

    fn delivery(state: DeliveryState, failures: u32) -> Notification {
        Notification {
            sink: NotificationSink::Operator,
            event_id: "uid.1".into(),
            state,
            failures,
            last_error: (failures > 0).then(|| "HTTP 503".into()),
            next_attempt_time: None,
            delivered_time: None,
        }
    }

    fn condition(deliveries: Vec<Notification>) -> Option<(String, String)> {
        let mut status = ImageJobStatus {
            notifications: Some(Box::new(deliveries)),
            ..Default::default()
        };
        report(&mut status, &Time(Timestamp::now()));
        (status.conditions.iter())
            .find(|c| c.type_ == CONDITION_NOTIFIED)
            .map(|c| (c.status.clone(), c.reason.clone()))
    }

    #[test]
    fn the_condition_shows_a_failing_or_dead_sink() {
        let c = |status: &str, reason: &str| Some((status.to_owned(), reason.to_owned()));
        assert_eq!(condition(vec![delivery(DeliveryState::Pending, 0)]), None);
        assert_eq!(
            condition(vec![delivery(DeliveryState::Pending, 2)]),
            c("False", "Retrying")
        );
        assert_eq!(
            condition(vec![
                delivery(DeliveryState::Delivered, 0),
                delivery(DeliveryState::Failed, 10)
            ]),
            c("False", "SinkFailed")
        );
        assert_eq!(
            condition(vec![delivery(DeliveryState::Refused, 0)]),
            c("False", "SinkNotAllowed")
        );
        assert_eq!(
            condition(vec![delivery(DeliveryState::Delivered, 1)]),
            c("True", "Delivered")
        );
    }
}
