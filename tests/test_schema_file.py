from kianax.cli import SCHEMA_FILE, schema_sdl


def test_committed_schema_matches_the_code() -> None:
    assert SCHEMA_FILE.read_text() == schema_sdl(), "schema.graphql is stale: run `kianax schema`"
