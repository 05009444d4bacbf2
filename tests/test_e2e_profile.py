"""/seed and /settings end to end: saved per member, used by /imagine, bad values refused."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from cogs._imagine_options import sizes
from engine.metadata import parse_parameters
from tests.e2e_harness import answer, ephemeral, running, wait_result


async def parameters(world, user, options: dict) -> list[dict[str, str]]:
    """Run /imagine and return the parsed parameters of each image."""
    it = await world.slash(user, "imagine", options)
    result = await wait_result(it)
    found = []
    for upload in result.files:
        with Image.open(io.BytesIO(upload.data)) as png:
            found.append(parse_parameters(png.info["parameters"]))
    return found


async def test_fixed_seed_is_used_shown_and_cleared(world, tiny_model_dir: Path) -> None:
    async with running(world, tiny_model_dir) as bot:
        empty = await answer(await world.slash(world.alice, "seed show"))
        assert ephemeral(empty) and "random" in empty.content and "not made" in empty.content

        reply = await answer(await world.slash(world.alice, "seed set", {"value": 4242}))
        assert ephemeral(reply) and "4242" in reply.content
        params = await parameters(world, world.alice, {"prompt": "a lighthouse", "count": 2})
        assert [p["Seed"] for p in params] == ["4242", "4243"]
        # Bob keeps random seeds.
        assert (await bot.storage.users.get_user(world.bob.id)) is None

        shown = await answer(await world.slash(world.alice, "seed show"))
        assert "fixed at `4242`" in shown.content and "`4242`, `4243`" in shown.content

        reply = await answer(await world.slash(world.alice, "seed random"))
        assert ephemeral(reply) and "random" in reply.content
        assert (await bot.storage.users.get_user(world.alice.id)).fixed_seed is None
        params = await parameters(world, world.alice, {"prompt": "a lighthouse"})
        assert params[0]["Seed"] != "4242"
        shown = await answer(await world.slash(world.alice, "seed show"))
        assert f"`{params[0]['Seed']}`" in shown.content and "random" in shown.content

        bad = await answer(await world.slash(world.alice, "seed set", {"value": 2**40}))
        assert ephemeral(bad) and "0 to" in bad.content


async def test_settings_are_saved_used_validated_and_reset(world, tiny_model_dir: Path) -> None:
    async with running(world, tiny_model_dir) as bot:
        shown = await answer(await world.slash(world.alice, "settings show"))
        embed = str(shown.data["embeds"])
        assert ephemeral(shown) and "*default*" in embed and "Steps" in embed

        reply = await answer(
            await world.slash(
                world.alice,
                "settings set",
                {"steps": 2, "cfg": 5.5, "sampler": "euler a", "negative": "fog"},
            )
        )
        embed = str(reply.data["embeds"])
        assert ephemeral(reply) and "Euler a" in embed and "5.5" in embed and "fog" in embed
        profile = await bot.storage.users.get_user(world.alice.id)
        assert (profile.steps, profile.cfg, profile.sampler) == (2, 5.5, "Euler a")

        params = (await parameters(world, world.alice, {"prompt": "a quiet bay", "seed": 1}))[0]
        assert params["Steps"] == "2" and params["CFG scale"] == "5.5"
        assert params["Sampler"] == "Euler a" and params["negative_prompt"] == "fog"
        # An option given to /imagine wins over the saved default.
        params = (await parameters(world, world.alice, {"prompt": "a bay", "steps": 3}))[0]
        assert params["Steps"] == "3"

        assert sizes(bot)["portrait"] == (64, 96)
        complete = await world.fake.send_autocomplete(
            world.alice, world.general, "settings set", {"size": "por"}, focused="size"
        )
        assert [c["value"] for c in await complete.wait_choices()] == ["portrait"]
        await answer(await world.slash(world.alice, "settings set", {"size": "portrait"}))
        profile = await bot.storage.users.get_user(world.alice.id)
        assert (profile.width, profile.height) == (64, 96)

        cases = [
            ({"steps": 500}, "Steps must be from 1 to 150"),
            ({"steps": 0}, "Steps must be from 1 to 150"),
            ({"cfg": 31}, "CFG must be from 0 to 30"),
            ({"size": "gigantic"}, "Unknown size `gigantic`"),
            ({"sampler": "Warp drive"}, "Unknown sampler `Warp drive`"),
            ({}, "at least one setting"),
        ]
        for options, expected in cases:
            reply = await answer(await world.slash(world.alice, "settings set", options))
            assert ephemeral(reply) and expected in (reply.content or ""), reply.payload
        profile = await bot.storage.users.get_user(world.alice.id)
        assert (profile.steps, profile.cfg) == (2, 5.5)

        reply = await answer(await world.slash(world.alice, "settings reset"))
        assert ephemeral(reply) and "*default*" in str(reply.data["embeds"])
        profile = await bot.storage.users.get_user(world.alice.id)
        assert profile.defaults() == {}
        params = (await parameters(world, world.alice, {"prompt": "a bay", "seed": 2}))[0]
        assert params["Steps"] == "3" and params["Sampler"] != "Euler a"
