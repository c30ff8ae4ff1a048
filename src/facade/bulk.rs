//! Bulk cancel and bulk delete: the jobs a list query takes (the same filters, the same page
//! and `continue`), each cancelled or deleted as a single request would, and an answer saying
//! how many and which, with why each skipped job was left.

use super::{
    actions,
    error::ApiError,
    filter::JobFilter,
    model::ListQuery,
    routes::{page_of, query},
    state::FacadeState,
};
use axum::{
    Json,
    extract::{Query, State, rejection::QueryRejection},
    response::IntoResponse,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;

/// What a bulk action did.
#[derive(Serialize, Deserialize, Debug, ToSchema)]
pub struct BulkResponse {
    /// How many jobs it acted on.
    pub count: usize,
    /// The workflows of those jobs.
    pub workflow_ids: Vec<String>,
    /// The jobs of the page it left, and why.
    pub skipped: Vec<Skipped>,
    /// Token of the next page of the same query, when there is one.
    #[serde(rename = "continue", skip_serializing_if = "Option::is_none")]
    pub continue_token: Option<String>,
}

/// A job a bulk action left.
#[derive(Serialize, Deserialize, Debug, ToSchema)]
pub struct Skipped {
    /// Its workflow.
    pub workflow_id: String,
    /// Why, as the single request's error code says it (`already_finished`, `not_found`).
    pub code: String,
    /// Why, in words.
    pub message: String,
}

/// Which action.
#[derive(Clone, Copy)]
enum Action {
    Cancel,
    Delete,
}

/// Cancels, keeping their records, the jobs the query takes: the page the same query lists
/// (at most `limit`, 100 by default; follow `continue` for the next). Finished jobs are
/// skipped, each with its reason.
#[utoipa::path(post, path = "/images/workflows/cancel", params(ListQuery),
    responses((status = 200, body = BulkResponse), (status = 400, body = super::error::ErrorBody),
              (status = 401, body = super::error::ErrorBody, description = "missing bearer token"),
              (status = 403, body = super::error::ErrorBody, description = "token not accepted")),
    security(("bearer" = [])))]
pub async fn cancel(
    State(state): State<Arc<FacadeState>>,
    params: Result<Query<ListQuery>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    act(&state, params, Action::Cancel).await
}

/// Deletes the jobs the query takes: the page the same query lists (at most `limit`, 100 by
/// default; follow `continue` for the next). The controller cancels their running workflows
/// first.
#[utoipa::path(post, path = "/images/workflows/delete", params(ListQuery),
    responses((status = 200, body = BulkResponse), (status = 400, body = super::error::ErrorBody),
              (status = 401, body = super::error::ErrorBody, description = "missing bearer token"),
              (status = 403, body = super::error::ErrorBody, description = "token not accepted")),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<Arc<FacadeState>>,
    params: Result<Query<ListQuery>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    act(&state, params, Action::Delete).await
}

async fn act(
    state: &FacadeState,
    params: Result<Query<ListQuery>, QueryRejection>,
    action: Action,
) -> Result<Json<BulkResponse>, ApiError> {
    let params = query(params)?;
    let filter = JobFilter::new(&params.filters())?;
    let page = page_of(state, &params, &filter)?;
    let mut done = BulkResponse {
        count: 0,
        workflow_ids: Vec::new(),
        skipped: Vec::new(),
        continue_token: page.next,
    };
    for job in page.jobs {
        let Some(workflow_id) = job.workflow_id() else {
            continue;
        };
        let outcome = match action {
            Action::Cancel => actions::cancel(state, &job, &workflow_id).await,
            Action::Delete => actions::delete(state, &job, &workflow_id).await,
        };
        match outcome {
            Ok(()) => {
                done.count += 1;
                done.workflow_ids.push(workflow_id);
            }
            Err(e @ (ApiError::AlreadyFinished { .. } | ApiError::NotFound(_))) => {
                done.skipped.push(Skipped {
                    workflow_id,
                    code: e.code().to_owned(),
                    message: e.to_string(),
                });
            }
            // The apiserver failing is not one job's matter: stop, saying so.
            Err(e) => return Err(e),
        }
    }
    tracing::info!(
        count = done.count,
        skipped = done.skipped.len(),
        "bulk action done"
    );
    Ok(Json(done))
}
