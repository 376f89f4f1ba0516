-- The reply dispatcher (workers/dispatcher.py) follows the event store and asks the
-- assistant to answer each user message. On a database that already holds events it starts
-- at their end: the messages before it were answered (or given up on) by the enqueue the
-- command service used to send, and must not be answered a second time.
INSERT INTO projection_checkpoints (name, last_txid, last_position)
SELECT 'reply_dispatcher', txid, position
  FROM events
 ORDER BY txid DESC, position DESC
 LIMIT 1
ON CONFLICT (name) DO NOTHING;
