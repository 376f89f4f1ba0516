"""The query service: the HTTP read API over the read model, as the RLS-bound chat_query role."""
