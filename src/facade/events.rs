//! `GET /images/events`: the watch cache's changes as Server-Sent Events, for the jobs page.
//! A `hello` event comes first (load the list after it and nothing is missed), then a `job`
//! event (a [`WorkflowSummary`]) per created or changed job, `deleted` (the workflow id) per
//! deleted one, and `reload` when the stream cannot say what changed (the watch relisted, or
//! this client fell behind).

use super::{
    auth::Caller, cache::JobUpdate, error::ApiError, model::WorkflowSummary, state::FacadeState,
};
use axum::{
    Extension,
    extract::State,
    response::sse::{Event, KeepAlive, Sse},
};
use futures::{Stream, StreamExt};
use std::{convert::Infallible, sync::Arc, time::Duration};
use tokio::sync::broadcast::{Receiver, error::RecvError};

/// Comment lines sent while nothing changes, so proxies keep the stream open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The change stream.
#[utoipa::path(get, path = "/images/events",
    responses((status = 200, content_type = "text/event-stream",
        description = "`hello`, then `job` (a WorkflowSummary as JSON), `deleted` (a workflow id) and `reload` events"),
        (status = 401, body = super::error::ErrorBody, description = "missing bearer token"),
        (status = 403, body = super::error::ErrorBody, description = "token not accepted"),
        (status = 503, body = super::error::ErrorBody, description = "too many streams open on this replica (see Retry-After)")),
    security(("bearer" = [])))]
pub async fn events(
    State(state): State<Arc<FacadeState>>,
    caller: Option<Extension<Caller>>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    // Held by the stream for as long as it is open.
    let place = state.limits.event_stream()?;
    let hello = Event::default().event("hello").data("{}");
    let changes = futures::stream::unfold(state.cache.updates(), |mut updates| async move {
        let event = next_event(&mut updates).await?;
        Some((event, updates))
    });
    // A facade shutting down ends the stream; the browser reconnects, to another replica. So
    // does a token taken out of the token file: the stream ends, and reconnecting is refused.
    let draining = state.draining.clone();
    let ended = async move {
        match caller {
            Some(Extension(caller)) => {
                tokio::select! {
                    _ = draining.started() => {}
                    _ = caller.revoked() => {}
                }
            }
            None => draining.started().await,
        }
    };
    let stream = futures::stream::once(async { hello })
        .chain(changes)
        .take_until(ended)
        .map(move |event| {
            let _held = &place;
            Ok(event)
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// The next event to send; `None` once the cache is gone.
async fn next_event(updates: &mut Receiver<JobUpdate>) -> Option<Event> {
    loop {
        let event = match updates.recv().await {
            Ok(JobUpdate::Applied(job)) => match WorkflowSummary::of(&job)
                .and_then(|summary| Event::default().event("job").json_data(summary).ok())
            {
                Some(event) => event,
                None => continue,
            },
            Ok(JobUpdate::Deleted(workflow_id)) => {
                Event::default().event("deleted").data(workflow_id)
            }
            Ok(JobUpdate::Relisted) | Err(RecvError::Lagged(_)) => {
                Event::default().event("reload").data("{}")
            }
            Err(RecvError::Closed) => return None,
        };
        return Some(event);
    }
}
