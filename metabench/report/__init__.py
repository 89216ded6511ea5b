"""Reports: leaderboards (Markdown, CSV, HTML), reproduction of published claims, and paired comparison of
two result sets. Pure functions of records; imports the engine (records, registry) and below."""
