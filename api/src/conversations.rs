//! `/v1/conversations`: the tenant's chats with the task assistant, most recently active
//! first, each with its messages; and their deletion. A conversation's id is the id of the
//! `agent.chat` job that started it; it is listed once that job has run.

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::{Path, Query},
    payload::Json,
};
use serde_json::Value;
use taskfleet_storage::{ChatMessage, ConversationRecord};
use uuid::Uuid;

use crate::{auth::TenantKey, chat::TokenCount, error::ApiError, paging, state::AppState};

#[derive(Debug, Object)]
pub struct Conversation {
    pub id: Uuid,
    /// The start of its first message.
    pub title: String,
    /// Messages so far, the person's and the assistant's.
    pub message_count: i64,
    pub created_at: DateTime<Utc>,
    /// When its latest message was stored.
    pub updated_at: DateTime<Utc>,
}

impl From<&ConversationRecord> for Conversation {
    fn from(record: &ConversationRecord) -> Conversation {
        Conversation {
            id: record.id,
            title: record.title.clone(),
            message_count: record.messages,
            created_at: record.created_at,
            updated_at: record.updated_at,
        }
    }
}

#[derive(Debug, Object)]
pub struct ConversationPage {
    /// Most recently active first.
    pub conversations: Vec<Conversation>,
    /// Pass as `after` for the next page; absent on the last page.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Object)]
pub struct ConversationMessage {
    pub id: i64,
    /// The `agent.chat` job of the turn.
    pub job_id: Uuid,
    /// `user` or `assistant`.
    pub role: String,
    pub content: String,
    /// The assistant's task tool calls, `[{name, arguments, result}]`; empty for the user's.
    pub tool_calls: Value,
    /// The model that answered (the assistant's messages).
    #[oai(nullable)]
    pub model: Option<String>,
    /// Tokens the turn spent (on the assistant's message; zeros on the user's).
    pub usage: TokenCount,
    pub at: DateTime<Utc>,
}

impl From<ChatMessage> for ConversationMessage {
    fn from(message: ChatMessage) -> ConversationMessage {
        ConversationMessage {
            id: message.id,
            job_id: message.job_id,
            role: message.role,
            content: message.content,
            tool_calls: message.tool_calls,
            model: message.model,
            usage: TokenCount {
                input_tokens: message.input_tokens,
                output_tokens: message.output_tokens,
            },
            at: message.at,
        }
    }
}

#[derive(Debug, Object)]
pub struct ConversationDetail {
    #[oai(flatten)]
    pub conversation: Conversation,
    /// Oldest first.
    pub messages: Vec<ConversationMessage>,
}

#[derive(ApiResponse)]
pub enum ConversationDeleted {
    /// Deleted with its messages; the tasks its tool calls changed stay as they are.
    #[oai(status = 204)]
    Deleted,
}

/// A page's cursor: the last conversation's `updated_at` (microseconds) and id, as they were
/// when the page was read.
fn read_cursor(cursor: &str) -> Result<(DateTime<Utc>, Uuid), ApiError> {
    let refused = || ApiError::invalid("`after` is not a cursor this API returned");
    let (micros, id) = cursor.split_once('_').ok_or_else(refused)?;
    let at = micros
        .parse::<i64>()
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(refused)?;
    Ok((at, id.parse().map_err(|_| refused())?))
}

fn no_conversation(id: Uuid) -> ApiError {
    ApiError::not_found(format!("no conversation {id}"))
}

pub struct ConversationsApi;

#[OpenApi(prefix_path = "/v1", tag = "crate::app::Tag::Chat")]
impl ConversationsApi {
    /// List conversations
    ///
    /// The tenant's own, most recently active first, one page at a time.
    #[oai(
        path = "/conversations",
        method = "get",
        operation_id = "listConversations"
    )]
    async fn list(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        /// `next_cursor` of the previous page.
        after: Query<Option<String>>,
        /// Page size, 1 to 500 (default 50).
        #[oai(validator(minimum(value = "1"), maximum(value = "500")))]
        limit: Query<Option<i64>>,
    ) -> Result<Json<ConversationPage>, ApiError> {
        let limit = limit.0.unwrap_or(paging::DEFAULT_LIMIT);
        let after = after.0.as_deref().map(read_cursor).transpose()?;
        let records = state.conversations.list(auth.0.id, after, limit).await?;
        let full = records.len() as i64 == limit;
        Ok(Json(ConversationPage {
            next_cursor: records
                .last()
                .filter(|_| full)
                .map(|last| format!("{}_{}", last.updated_at.timestamp_micros(), last.id)),
            conversations: records.iter().map(Conversation::from).collect(),
        }))
    }

    /// Get a conversation with its messages
    #[oai(
        path = "/conversations/:id",
        method = "get",
        operation_id = "getConversation"
    )]
    async fn get(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        id: Path<Uuid>,
    ) -> Result<Json<ConversationDetail>, ApiError> {
        let (record, messages) = state
            .conversations
            .get(auth.0.id, id.0)
            .await?
            .ok_or_else(|| no_conversation(id.0))?;
        Ok(Json(ConversationDetail {
            conversation: Conversation::from(&record),
            messages: messages.into_iter().map(Into::into).collect(),
        }))
    }

    /// Delete a conversation
    #[oai(
        path = "/conversations/:id",
        method = "delete",
        operation_id = "deleteConversation"
    )]
    async fn delete(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        id: Path<Uuid>,
    ) -> Result<ConversationDeleted, ApiError> {
        match state.conversations.delete(auth.0.id, id.0).await? {
            true => Ok(ConversationDeleted::Deleted),
            false => Err(no_conversation(id.0)),
        }
    }
}
