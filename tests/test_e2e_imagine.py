"""/imagine end to end over the wire: defer, progress edits, final PNGs, buttons, fairness."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from engine.metadata import parse_parameters
from tests.e2e_harness import make_world, running
from tests.fake_discord import FakeDiscord


@pytest.fixture
async def world(tmp_path: Path):
    async with FakeDiscord() as fake:
        yield make_world(fake, tmp_path)
        assert fake.unhandled == []


def final_edit(record):
    """The edit of @original that carries files."""
    return [e for e in record.events if e.kind == "edit_original" and e.files]


async def wait_result(record, timeout: float = 60):
    return await record.wait_for(
        lambda e: e.kind == "edit_original" and bool(e.files) and not e.files[0].filename.startswith("preview"),
        timeout=timeout,
    )


async def test_imagine_from_defer_to_images(world, tiny_model_dir: Path) -> None:
    async with running(world, tiny_model_dir):
        it = await world.slash(world.alice, "imagine", {"prompt": "a red castle", "seed": 5, "count": 2})
        assert (await it.wait_callback()).type == 5
        result = await wait_result(it)
        edits = [e for e in it.events if e.kind == "edit_original"]
        texts = [e.payload.get("content") or "" for e in edits]
        assert any("Queued" in t or "step" in t for t in texts[:-1])
        assert any("step" in t for t in texts)
        names = [f.filename for f in result.files]
        assert names == [f"job1-{i}.png" for i in range(2)]
        for index, upload in enumerate(result.files):
            assert upload.data[:8] == b"\x89PNG\r\n\x1a\n"
            with Image.open(io.BytesIO(upload.data)) as image:
                params = parse_parameters(image.info["parameters"])
                assert image.size == (64, 64)
            assert params["prompt"] == "a red castle" and params["Seed"] == str(5 + index)
        embed = result.payload["embeds"][0]
        assert "`5`, `6`" in str(embed)
        custom_ids = str(result.payload.get("components"))
        for action in ("reroll", "var", "seed", "del"):
            assert f"sd:{action}:1" in custom_ids
        # The seeds are recorded for /seed and the image files are on disk.
        generation = await world.bot.storage.generations.get_generation_by_job(1)
        assert generation is not None and list(generation.seeds) == [5, 6]
        assert all(Path(p).is_file() for p in generation.image_paths)
