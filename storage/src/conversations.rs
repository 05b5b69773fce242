//! Chat conversations and their messages. A conversation's id is the id of the `agent.chat`
//! job that started it, so a client can send its next message before the first reply is in:
//! the id is known the moment the first job is accepted. A conversation is made with its
//! first stored turn (a first message whose job died leaves nothing behind), and each job
//! writes its user message and its reply together, once, however often the job runs.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// The most characters of a first message kept as the conversation's title.
const TITLE_CHARS: usize = 80;

#[derive(Debug, Clone, PartialEq)]
pub struct ConversationRecord {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub title: String,
    pub messages: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    pub id: i64,
    pub job_id: Uuid,
    /// `user` or `assistant`.
    pub role: String,
    pub content: String,
    /// `[{name, arguments, result}]`, for a reply.
    pub tool_calls: Value,
    pub model: Option<String>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub at: DateTime<Utc>,
}

/// One finished chat turn, to store.
#[derive(Debug, Clone)]
pub struct Turn<'a> {
    pub tenant: Uuid,
    pub conversation: Uuid,
    pub job: Uuid,
    pub message: &'a str,
    pub reply: &'a str,
    pub tool_calls: &'a Value,
    pub model: &'a str,
    pub input_tokens: i64,
    pub output_tokens: i64,
}

#[derive(Debug, Clone)]
pub struct Conversations {
    pool: PgPool,
}

impl Conversations {
    pub fn new(pool: PgPool) -> Conversations {
        Conversations { pool }
    }

    /// Whether `id` names a conversation of the tenant, or one that its first job, accepted
    /// and not yet run, is about to start.
    pub async fn known(&self, tenant: Uuid, id: Uuid) -> sqlx::Result<bool> {
        sqlx::query_scalar!(
            r#"SELECT EXISTS (SELECT 1 FROM conversations WHERE id = $2 AND tenant_id = $1)
                 OR EXISTS (SELECT 1 FROM jobs
                            WHERE id = $2 AND tenant_id = $1 AND kind = 'agent.chat'
                              AND payload->>'conversation_id' IS NULL
                              AND state IN ('scheduled', 'queued', 'running', 'retrying'))
                 AS "known!""#,
            tenant,
            id,
        )
        .fetch_one(&self.pool)
        .await
    }

    /// Whether the tenant may write to conversation `id`: it is the tenant's, or does not
    /// exist yet.
    pub async fn writable(&self, tenant: Uuid, id: Uuid) -> sqlx::Result<bool> {
        let owner: Option<Uuid> =
            sqlx::query_scalar!("SELECT tenant_id FROM conversations WHERE id = $1", id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(owner.is_none_or(|owner| owner == tenant))
    }

    /// The conversation's latest `limit` messages, oldest first, leaving out those of `job`
    /// (a retried job's own turn, stored by an attempt that did not finish).
    pub async fn history(
        &self,
        tenant: Uuid,
        conversation: Uuid,
        job: Uuid,
        limit: i64,
    ) -> sqlx::Result<Vec<ChatMessage>> {
        let mut messages: Vec<ChatMessage> = sqlx::query_as!(
            ChatMessage,
            "SELECT id, job_id, role, content, tool_calls, model, input_tokens, output_tokens, at
             FROM chat_messages
             WHERE conversation_id = $1 AND job_id <> $2 AND tenant_id = $4
             ORDER BY id DESC LIMIT $3",
            conversation,
            job,
            limit,
            tenant,
        )
        .fetch_all(&self.pool)
        .await?;
        messages.reverse();
        Ok(messages)
    }

    /// Stores a turn: the user's message and the reply, replacing what an earlier attempt of
    /// the same job stored; a first turn makes the conversation, titled after its message.
    /// False (and nothing stored) when the id is another tenant's conversation.
    pub async fn record(&self, turn: Turn<'_>) -> sqlx::Result<bool> {
        let mut tx = self.pool.begin().await?;
        let message = turn.message.trim();
        let title = match message.char_indices().nth(TITLE_CHARS) {
            Some((end, _)) => format!("{}…", &message[..end]),
            None => message.to_owned(),
        };
        let owned: Option<Uuid> = sqlx::query_scalar!(
            "INSERT INTO conversations (id, tenant_id, title) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET updated_at = now()
                 WHERE conversations.tenant_id = $2
             RETURNING id",
            turn.conversation,
            turn.tenant,
            title,
        )
        .fetch_optional(&mut *tx)
        .await?;
        if owned.is_none() {
            return Ok(false);
        }
        let rows = [
            ("user", turn.message, &Value::Array(Vec::new()), None, 0, 0),
            (
                "assistant",
                turn.reply,
                turn.tool_calls,
                Some(turn.model),
                turn.input_tokens,
                turn.output_tokens,
            ),
        ];
        for (role, content, tool_calls, model, input, output) in rows {
            sqlx::query!(
                "INSERT INTO chat_messages (conversation_id, tenant_id, job_id, role, content,
                                            tool_calls, model, input_tokens, output_tokens)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (job_id, role) DO UPDATE
                     SET content = $5, tool_calls = $6, model = $7, input_tokens = $8,
                         output_tokens = $9, at = now()",
                turn.conversation,
                turn.tenant,
                turn.job,
                role,
                content,
                tool_calls,
                model,
                input,
                output,
            )
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// A page of the tenant's conversations, most recently active first; `after` is the
    /// `(updated_at, id)` of the last one of the page before, as it was then (a conversation
    /// that moved or went since does not shift the pages).
    pub async fn list(
        &self,
        tenant: Uuid,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> sqlx::Result<Vec<ConversationRecord>> {
        sqlx::query_as!(
            ConversationRecord,
            r#"SELECT c.id, c.tenant_id, c.title, c.created_at, c.updated_at,
                    (SELECT count(*) FROM chat_messages m WHERE m.conversation_id = c.id)
                        AS "messages!"
             FROM conversations c
             WHERE c.tenant_id = $1
               AND ($2::timestamptz IS NULL OR (c.updated_at, c.id) < ($2, $3))
             ORDER BY c.updated_at DESC, c.id DESC
             LIMIT $4"#,
            tenant,
            after.map(|(at, _)| at),
            after.map(|(_, id)| id),
            limit,
        )
        .fetch_all(&self.pool)
        .await
    }

    /// The conversation and every message of it, oldest first.
    pub async fn get(
        &self,
        tenant: Uuid,
        id: Uuid,
    ) -> sqlx::Result<Option<(ConversationRecord, Vec<ChatMessage>)>> {
        let record: Option<ConversationRecord> = sqlx::query_as!(
            ConversationRecord,
            r#"SELECT c.id, c.tenant_id, c.title, c.created_at, c.updated_at,
                    (SELECT count(*) FROM chat_messages m WHERE m.conversation_id = c.id)
                        AS "messages!"
             FROM conversations c WHERE c.tenant_id = $1 AND c.id = $2"#,
            tenant,
            id,
        )
        .fetch_optional(&self.pool)
        .await?;
        let Some(record) = record else {
            return Ok(None);
        };
        let messages = sqlx::query_as!(
            ChatMessage,
            "SELECT id, job_id, role, content, tool_calls, model, input_tokens, output_tokens, at
             FROM chat_messages WHERE conversation_id = $1 ORDER BY id",
            id,
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(Some((record, messages)))
    }

    /// Deletes the conversation and its messages; false when the tenant has none of that id.
    pub async fn delete(&self, tenant: Uuid, id: Uuid) -> sqlx::Result<bool> {
        let gone = sqlx::query!(
            "DELETE FROM conversations WHERE tenant_id = $1 AND id = $2",
            tenant,
            id,
        )
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(gone == 1)
    }
}
