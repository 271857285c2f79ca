-- Version 1 of the history database. Later versions are steps in store.MIGRATIONS.
-- Engine states are files (snapshots/); this database records their paths, never the blobs.

-- AUTOINCREMENT: ids are never reused, so a stale reference (the engine thread's live session,
-- a pane's conversation id) can never point at a newer conversation or message
CREATE TABLE conversations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    title TEXT NOT NULL,
    system_prompt TEXT NOT NULL DEFAULT '',
    -- JSON object of SamplingParams fields that differ from the defaults
    sampling TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);

CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    -- 'event' is something fed into the state that is not a chat turn (a document, frames)
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'event')),
    content TEXT NOT NULL,
    created_at REAL NOT NULL,
    -- JSON of the reply's GenerationStats, NULL for other roles
    stats TEXT
);
CREATE INDEX messages_by_conversation ON messages(conversation_id, id);

CREATE TABLE attachments (
    sha256 TEXT PRIMARY KEY,
    mime TEXT NOT NULL,
    nbytes INTEGER NOT NULL
);

CREATE TABLE message_attachments (
    message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    sha256 TEXT NOT NULL REFERENCES attachments(sha256),
    PRIMARY KEY (message_id, position)
);

CREATE TABLE snapshots (
    id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    -- the last message the state includes; NULL for a state before any message
    message_id INTEGER REFERENCES messages(id) ON DELETE CASCADE,
    -- file name inside the snapshots directory
    file TEXT NOT NULL UNIQUE,
    tokens_seen INTEGER NOT NULL,
    nbytes INTEGER NOT NULL,
    model TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX snapshots_by_conversation ON snapshots(conversation_id, id);

CREATE VIRTUAL TABLE messages_fts USING fts5(
    content, content='messages', content_rowid='id', tokenize='unicode61 remove_diacritics 2'
);
CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content);
END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
END;
CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
    INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content);
END;
