"""docs/configuration.md is generated from the settings and must match them."""

from pathlib import Path

from pulse.config_docs import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_configuration_reference_is_up_to_date() -> None:
    assert DOC.read_text() == render() + "\n", (
        "docs/configuration.md is stale: run `.venv/bin/python -m pulse.config_docs > docs/configuration.md`"
    )


def test_every_key_has_a_description() -> None:
    from pulse.config import Settings

    for section, field in Settings.model_fields.items():
        model = field.default_factory()  # type: ignore[misc]
        for key, sub in type(model).model_fields.items():
            assert sub.description, f"{section}.{key} has no description"
