"""The database's schema: numbered migrations, applied once each, in order (``Database``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    number: int
    name: str
    sql: str
    """SQLite's text; PostgreSQL runs it too, its column types translated (dialect.py)."""
    postgres: str | None = None
    """PostgreSQL's own text, where SQLite's does not translate (FTS5, randomblob)."""


MIGRATIONS: list[Migration] = [  # applied once each, in order; recorded in ``migrations``
    Migration(
        1,
        "foundation",
        """
        CREATE TABLE inbox (
            id INTEGER PRIMARY KEY,
            thread_id TEXT NOT NULL,
            client_id TEXT NOT NULL,
            source TEXT NOT NULL,
            sender TEXT NOT NULL,
            text TEXT NOT NULL,
            system INTEGER NOT NULL DEFAULT 0,
            meta TEXT NOT NULL DEFAULT '{}',
            status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done')),
            created_at REAL NOT NULL,
            done_at REAL,
            UNIQUE (thread_id, client_id)
        );
        CREATE INDEX inbox_pending ON inbox (id) WHERE status = 'pending';

        CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            thread_id TEXT NOT NULL,
            role TEXT NOT NULL
                CHECK (role IN ('user', 'assistant', 'tool', 'summary', 'notice')),
            content TEXT NOT NULL,
            tool_calls TEXT,
            tool_call_id TEXT,
            name TEXT,
            inbox_id INTEGER REFERENCES inbox (id),
            in_context INTEGER NOT NULL DEFAULT 1,
            visible INTEGER NOT NULL DEFAULT 1,
            tokens INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL
        );
        CREATE INDEX messages_context ON messages (thread_id, id) WHERE in_context = 1;
        CREATE INDEX messages_visible ON messages (thread_id, id) WHERE visible = 1;
        CREATE UNIQUE INDEX messages_user_inbox ON messages (inbox_id) WHERE role = 'user';

        CREATE TABLE outbox (
            id INTEGER PRIMARY KEY,
            thread_id TEXT NOT NULL,
            message_id INTEGER NOT NULL REFERENCES messages (id),
            created_at REAL NOT NULL,
            delivered_at REAL
        );
        CREATE INDEX outbox_pending ON outbox (thread_id, id) WHERE delivered_at IS NULL;

        CREATE TABLE thread_settings (
            thread_id TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (thread_id, key)
        );
        """,
    ),
    Migration(
        2,
        "reminders",
        """
        CREATE TABLE reminders (
            id INTEGER PRIMARY KEY,
            thread_id TEXT NOT NULL,
            text TEXT NOT NULL,
            system INTEGER NOT NULL DEFAULT 0,
            cron TEXT,
            every_seconds REAL CHECK (every_seconds IS NULL OR every_seconds > 0),
            next_at REAL,
            status TEXT NOT NULL DEFAULT 'active'
                CHECK (status IN ('active', 'done', 'cancelled')),
            created_by TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            fired INTEGER NOT NULL DEFAULT 0,
            last_fired_at REAL,
            CHECK (status != 'active' OR next_at IS NOT NULL),
            CHECK (cron IS NULL OR every_seconds IS NULL)
        );
        CREATE INDEX reminders_due ON reminders (next_at) WHERE status = 'active';

        CREATE TABLE heartbeat_usage (
            day TEXT PRIMARY KEY,
            tokens INTEGER NOT NULL DEFAULT 0,
            reviews INTEGER NOT NULL DEFAULT 0,
            budget_noticed INTEGER NOT NULL DEFAULT 0
        );
        """,
    ),
    # There is no 0003, on purpose: a database records each migration by number, so numbers
    # are never reused or renumbered, and a gap is harmless (they run in number order).
    Migration(
        4,
        "endpoints_usage",
        """
        CREATE TABLE endpoints (
            name TEXT PRIMARY KEY,
            base_url TEXT NOT NULL,
            api_key TEXT NOT NULL,
            added_by TEXT NOT NULL,
            created_at REAL NOT NULL
        );

        CREATE TABLE models (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL UNIQUE,
            first_seen REAL NOT NULL
        );

        CREATE TABLE endpoint_models (
            endpoint TEXT NOT NULL,
            model_id INTEGER NOT NULL REFERENCES models (id),
            position INTEGER NOT NULL,
            PRIMARY KEY (endpoint, model_id)
        );

        CREATE TABLE aliases (
            alias TEXT PRIMARY KEY,
            model TEXT NOT NULL,
            created_by TEXT NOT NULL,
            created_at REAL NOT NULL
        );

        CREATE TABLE usage (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            account TEXT NOT NULL,
            sender TEXT NOT NULL,
            thread_id TEXT NOT NULL,
            source TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('message', 'call')),
            model TEXT,
            endpoint TEXT,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX usage_account
            ON usage (account, kind, at, prompt_tokens, completion_tokens);
        CREATE INDEX usage_thread ON usage (thread_id)
        """,
    ),
    Migration(
        5,
        "instance",
        """
        -- Tells this database apart from an earlier one at the same path (a reset): message
        -- ids start again at 1, so what is derived from them (Matrix transaction ids) must
        -- carry this too.
        CREATE TABLE instance (id TEXT NOT NULL);
        INSERT INTO instance (id) VALUES (lower(hex(randomblob(6))))
        """,
        postgres="""
        CREATE TABLE instance (id TEXT NOT NULL);
        INSERT INTO instance (id)
            VALUES (substr(md5(random()::text || clock_timestamp()::text), 1, 12))
        """,
    ),
    Migration(
        6,
        "turn_steps",
        """
        -- A turn's tool exchange, kept step by step while the turn runs: a turn re-run after
        -- a crash resumes from here instead of calling its tools (set_reminder, shell) again.
        -- Gone when the turn's outcome is stored.
        CREATE TABLE turn_steps (
            inbox_id INTEGER NOT NULL REFERENCES inbox (id),
            seq INTEGER NOT NULL,
            message TEXT NOT NULL,
            PRIMARY KEY (inbox_id, seq)
        )
        """,
    ),
    Migration(
        7,
        "retention",
        """
        -- The keys of answered messages whose inbox row retention deleted: a resent id is
        -- still known (exactly once) for a fraction of the row's size.
        CREATE TABLE inbox_pruned (
            thread_id TEXT NOT NULL,
            client_id TEXT NOT NULL,
            PRIMARY KEY (thread_id, client_id)
        ) WITHOUT ROWID;
        -- Retention unlinks history from the inbox rows it deletes (history itself stays).
        CREATE INDEX messages_inbox ON messages (inbox_id) WHERE inbox_id IS NOT NULL
        """,
    ),
    Migration(
        8,
        "conversations",
        """
        -- The web conversations the page lists: a title (the first words until the model
        -- gives a short one, or the person's own), archived or not, and when last active.
        CREATE TABLE conversations (
            thread_id TEXT PRIMARY KEY,
            title TEXT NOT NULL,
            title_by TEXT NOT NULL DEFAULT 'words' CHECK (title_by IN ('words', 'model', 'person')),
            archived INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            last_active REAL NOT NULL
        );
        CREATE INDEX conversations_recent ON conversations (last_active);
        -- The web threads of earlier runs, titled by their first message.
        INSERT INTO conversations (thread_id, title, created_at, last_active)
            SELECT thread_id, substr(text, 1, 200), min(created_at), max(created_at)
            FROM inbox WHERE thread_id GLOB 'web_*' AND system = 0 GROUP BY thread_id
        """,
        postgres="""
        CREATE TABLE conversations (
            thread_id TEXT PRIMARY KEY,
            title TEXT NOT NULL,
            title_by TEXT NOT NULL DEFAULT 'words' CHECK (title_by IN ('words', 'model', 'person')),
            archived BIGINT NOT NULL DEFAULT 0,
            created_at DOUBLE PRECISION NOT NULL,
            last_active DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX conversations_recent ON conversations (last_active);
        INSERT INTO conversations (thread_id, title, created_at, last_active)
            SELECT thread_id, substr(min(text), 1, 200), min(created_at), max(created_at)
            FROM inbox WHERE substr(thread_id, 1, 4) = 'web_' AND system = 0
            GROUP BY thread_id
        """,
    ),
    Migration(
        9,
        "media",
        """
        -- Files that came with messages (images first): one row per content (the id is the
        -- sha256 of the bytes, the file data/media/<id>). The row outlives the file, which
        -- retention removes (removed_at), so the history can still say what was there.
        CREATE TABLE media (
            id TEXT PRIMARY KEY,
            type TEXT NOT NULL,
            bytes INTEGER NOT NULL,
            width INTEGER,
            height INTEGER,
            created_at REAL NOT NULL,
            last_used REAL NOT NULL,
            removed_at REAL
        );
        -- Who sent the file in (an interface: "web"): a message may attach only its own.
        CREATE TABLE media_owners (
            media_id TEXT NOT NULL REFERENCES media (id),
            owner TEXT NOT NULL,
            PRIMARY KEY (media_id, owner)
        ) WITHOUT ROWID;
        -- The attachments of a message, stored with it: a crash before the answer re-runs
        -- the message with the same files. What deletes inbox rows deletes these first.
        CREATE TABLE media_refs (
            inbox_id INTEGER NOT NULL REFERENCES inbox (id),
            seq INTEGER NOT NULL,
            media_id TEXT NOT NULL REFERENCES media (id),
            PRIMARY KEY (inbox_id, seq)
        ) WITHOUT ROWID;
        CREATE INDEX media_refs_media ON media_refs (media_id)
        """,
    ),
    Migration(
        10,
        "search",
        """
        -- Full-text search over what a person sees of the history: user and assistant text
        -- (not tool results, summaries, hidden rows, nor a cancelled question,
        -- which is kept as it was queued, unmasked). An external-content index: the text
        -- stays in messages only, the triggers keep the index in step with every write, so
        -- deleting a conversation's messages takes them out of search too. Only rows that
        -- were indexed are ever deleted from it (deleting one that was not corrupts it).
        CREATE VIRTUAL TABLE messages_fts USING fts5 (
            content, content = 'messages', content_rowid = 'id',
            tokenize = 'unicode61 remove_diacritics 2'
        );
        CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages
            WHEN new.role IN ('user', 'assistant') AND new.visible = 1 AND new.content != ''
                AND coalesce(new.name, '') != 'cancelled'
        BEGIN
            INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);
        END;
        CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages
            WHEN old.role IN ('user', 'assistant') AND old.visible = 1 AND old.content != ''
                AND coalesce(old.name, '') != 'cancelled'
        BEGIN
            INSERT INTO messages_fts (messages_fts, rowid, content)
                VALUES ('delete', old.id, old.content);
        END;
        CREATE TRIGGER messages_fts_update_old AFTER UPDATE OF role, content, visible, name
            ON messages
            WHEN old.role IN ('user', 'assistant') AND old.visible = 1 AND old.content != ''
                AND coalesce(old.name, '') != 'cancelled'
        BEGIN
            INSERT INTO messages_fts (messages_fts, rowid, content)
                VALUES ('delete', old.id, old.content);
        END;
        CREATE TRIGGER messages_fts_update_new AFTER UPDATE OF role, content, visible, name
            ON messages
            WHEN new.role IN ('user', 'assistant') AND new.visible = 1 AND new.content != ''
                AND coalesce(new.name, '') != 'cancelled'
        BEGIN
            INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);
        END;
        -- The history of earlier runs, indexed once.
        INSERT INTO messages_fts (rowid, content)
            SELECT id, content FROM messages
            WHERE role IN ('user', 'assistant') AND visible = 1 AND content != ''
                AND coalesce(name, '') != 'cancelled'
        """,
        # PostgreSQL: an expression index over the same rows (storage/search.py's
        # SEARCHABLE), which the server keeps in step with every write by itself. 'simple':
        # words lower-cased, not stemmed, as FTS5's unicode61.
        postgres="""
        CREATE INDEX messages_search ON messages USING GIN (to_tsvector('simple', content))
            WHERE role IN ('user', 'assistant') AND visible = 1 AND content != ''
                AND coalesce(name, '') != 'cancelled'
        """,
    ),
    Migration(
        11,
        "replaced",
        """
        -- Regenerate and edit-and-resend (the web page): the answer they replace, or the
        -- edited question and its answer, stay in history and in the transcript, shown
        -- collapsed as 'regenerated' or 'edited'; they leave the model's context (their
        -- in_context is set to 0 with it) and search (below: what stands is found, not a
        -- rejected answer or a corrected question).
        ALTER TABLE messages ADD COLUMN replaced TEXT
            CHECK (replaced IS NULL OR replaced IN ('regenerated', 'edited'));
        DROP TRIGGER messages_fts_insert;
        DROP TRIGGER messages_fts_delete;
        DROP TRIGGER messages_fts_update_old;
        DROP TRIGGER messages_fts_update_new;
        CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages
            WHEN new.role IN ('user', 'assistant') AND new.visible = 1 AND new.content != ''
                AND coalesce(new.name, '') != 'cancelled' AND new.replaced IS NULL
        BEGIN
            INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);
        END;
        CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages
            WHEN old.role IN ('user', 'assistant') AND old.visible = 1 AND old.content != ''
                AND coalesce(old.name, '') != 'cancelled' AND old.replaced IS NULL
        BEGIN
            INSERT INTO messages_fts (messages_fts, rowid, content)
                VALUES ('delete', old.id, old.content);
        END;
        CREATE TRIGGER messages_fts_update_old
            AFTER UPDATE OF role, content, visible, name, replaced ON messages
            WHEN old.role IN ('user', 'assistant') AND old.visible = 1 AND old.content != ''
                AND coalesce(old.name, '') != 'cancelled' AND old.replaced IS NULL
        BEGIN
            INSERT INTO messages_fts (messages_fts, rowid, content)
                VALUES ('delete', old.id, old.content);
        END;
        CREATE TRIGGER messages_fts_update_new
            AFTER UPDATE OF role, content, visible, name, replaced ON messages
            WHEN new.role IN ('user', 'assistant') AND new.visible = 1 AND new.content != ''
                AND coalesce(new.name, '') != 'cancelled' AND new.replaced IS NULL
        BEGIN
            INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);
        END
        """,
        # No triggers to mend there: search reads messages itself (storage/search.py), its
        # query leaving replaced rows out.
        postgres="""
        ALTER TABLE messages ADD COLUMN replaced TEXT
            CHECK (replaced IS NULL OR replaced IN ('regenerated', 'edited'))
        """,
    ),
    Migration(
        12,
        "media_names",
        """
        -- The name a file last came with (cleaned), for the turn that saves it into the
        -- workspace and for the page; NULL for a pasted image or a recording. Independent of
        -- any migration 11: it touches only the media table.
        ALTER TABLE media ADD COLUMN name TEXT
        """,
    ),
    Migration(
        13,
        "message_media",
        """
        -- What a history message attached, once retention dropped its inbox row (and the
        -- media_refs with it): the transcript still shows the message's files (or that
        -- they were removed). Until then the link is messages.inbox_id -> media_refs. Goes
        -- with its message (a deleted conversation).
        CREATE TABLE message_media (
            message_id INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            media_id TEXT NOT NULL REFERENCES media (id),
            PRIMARY KEY (message_id, seq)
        ) WITHOUT ROWID;
        CREATE INDEX message_media_media ON message_media (media_id)
        """,
    ),
]
