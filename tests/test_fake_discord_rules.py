"""The fake Discord refuses what Discord refuses, seen through the real discord.py client."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import discord
import pytest
from discord.http import Route

from tests.fake_discord import FakeDiscord, FakeUser, InteractionRecord, Routes
from tests.test_fake_discord import PNG, TinyBot, no_leaked_tasks  # noqa: F401 (fixture)


class RulesBot(TinyBot):
    """TinyBot plus ``/hold``, which hands the interaction to the test to answer when it likes."""

    def __init__(self, guild_id: int) -> None:
        super().__init__(guild_id)
        self.held: asyncio.Queue[discord.Interaction] = asyncio.Queue()

    async def setup_hook(self) -> None:
        @self.tree.command(description="Hand the interaction to the test")
        async def hold(
            interaction: discord.Interaction, image: discord.Attachment | None = None
        ) -> None:
            await self.held.put(interaction)

        await super().setup_hook()


@dataclass
class Rig:
    """The fake, the bot, a channel as discord.py sees it, and a member."""

    fake: FakeDiscord
    bot: RulesBot
    channel: discord.TextChannel
    alice: FakeUser
    general_id: int

    async def hold(self, **options: Any) -> tuple[InteractionRecord, discord.Interaction]:
        """Send ``/hold`` and return its record and the bot's unanswered interaction."""
        fake_channel = self.fake.find_channel(self.general_id)
        assert fake_channel is not None
        record = await self.fake.send_slash(self.alice, fake_channel, "hold", options)
        return record, await asyncio.wait_for(self.bot.held.get(), 5)

    async def post(self, payload: dict[str, Any]) -> Any:
        """POST a raw JSON message body (for what discord.py itself refuses to build)."""
        route = Route("POST", "/channels/{channel_id}/messages", channel_id=self.channel.id)
        return await self.bot.http.request(route, json=payload)


@contextlib.asynccontextmanager
async def rig(**fake_options: Any) -> AsyncIterator[Rig]:
    """A running RulesBot against a fake made with ``fake_options``."""
    async with FakeDiscord(**fake_options) as fake:
        guild = fake.add_guild("Rules Guild")
        general = guild.add_channel("general")
        alice = fake.add_user("alice")
        guild.add_member(alice)
        with fake.patch_discord():
            bot = RulesBot(guild.id)
            async with fake.running(bot):
                channel = bot.get_channel(general.id)
                assert isinstance(channel, discord.TextChannel)
                yield Rig(fake, bot, channel, alice, general.id)
        assert fake.unhandled == []


@pytest.fixture
async def r() -> AsyncIterator[Rig]:
    async with rig() as value:
        yield value


# -- time limits -----------------------------------------------------------------------------


async def test_first_response_after_the_deadline_is_unknown_interaction() -> None:
    async with rig(interaction_deadline_s=0.3) as r:
        record, interaction = await r.hold()
        await asyncio.sleep(0.4)
        with pytest.raises(discord.NotFound) as info:
            await interaction.response.defer(thinking=True)
        assert info.value.code == 10062 and "Unknown interaction" in info.value.text
        assert not record.responded
        assert [(x.status, x.code) for x in r.fake.rejections] == [(404, 10062)]

        record, interaction = await r.hold()  # in time: accepted
        await interaction.response.defer(thinking=True)
        assert (await record.wait_callback()).type == 5


async def test_default_deadline_is_three_seconds(r: Rig) -> None:
    assert r.fake.interaction_deadline_s == 3.0
    _, interaction = await r.hold()
    r.fake.advance_clock(3.1)
    with pytest.raises(discord.NotFound) as info:
        await interaction.response.send_message("late")
    assert info.value.code == 10062


async def test_expired_token_refuses_edits_and_followups(r: Rig) -> None:
    record, interaction = await r.hold()
    await interaction.response.defer(thinking=True)
    await interaction.edit_original_response(content="working")  # fresh token: fine
    r.fake.expire_interaction(record)
    with pytest.raises(discord.HTTPException) as info:
        await interaction.edit_original_response(content="done")
    assert (info.value.status, info.value.code) == (401, 50027)
    with pytest.raises(discord.HTTPException) as info:
        await interaction.followup.send("done")
    assert (info.value.status, info.value.code) == (401, 50027)
    assert record.edits[-1].content == "working" and record.followups == []


async def test_token_lives_fifteen_minutes_on_the_fake_clock(r: Rig) -> None:
    record, interaction = await r.hold()
    await interaction.response.defer()
    r.fake.advance_clock(14 * 60)
    await interaction.followup.send("still valid")
    r.fake.advance_clock(61 + 1)
    with pytest.raises(discord.HTTPException) as info:
        await interaction.followup.send("too late")
    assert info.value.code == 50027
    assert [f.content for f in record.followups] == ["still valid"]


# -- size limits -----------------------------------------------------------------------------


async def test_upload_limit_per_message_is_a_parameter() -> None:
    async with rig(attachment_size_limit=1000) as r:
        await r.channel.send(file=discord.File(io.BytesIO(b"x" * 1000), "ok.bin"))
        two = [discord.File(io.BytesIO(b"x" * 600), f"{i}.bin") for i in range(2)]
        with pytest.raises(discord.HTTPException) as info:
            await r.channel.send(files=two)  # 1200 bytes in one message
        assert (info.value.status, info.value.code) == (413, 40005)
        record, interaction = await r.hold()
        with pytest.raises(discord.HTTPException) as info:
            big = discord.File(io.BytesIO(b"x" * 1001), "big.bin")
            await interaction.response.send_message("big", file=big)
        assert info.value.code == 40005
        assert len(r.fake.channel_messages) == 1 and not record.responded


async def test_default_upload_limit_is_ten_mib(r: Rig) -> None:
    assert r.fake.attachment_size_limit == 10 * 1024 * 1024
    with pytest.raises(discord.HTTPException) as info:
        await r.channel.send(file=discord.File(io.BytesIO(bytes(10 * 1024 * 1024 + 1)), "a.bin"))
    assert info.value.code == 40005


async def test_at_most_ten_attachments(r: Rig) -> None:
    files = [discord.File(io.BytesIO(PNG), f"{i}.png") for i in range(11)]
    with pytest.raises(discord.HTTPException) as info:
        await r.channel.send(files=files)
    assert info.value.code == 50035 and "attachments" in info.value.text
    ten = await r.channel.send(files=[discord.File(io.BytesIO(PNG), f"{i}.png") for i in range(10)])
    assert len(ten.attachments) == 10


async def test_content_over_2000_characters(r: Rig) -> None:
    await r.channel.send("x" * 2000)
    with pytest.raises(discord.HTTPException) as info:
        await r.channel.send("x" * 2001)
    assert (info.value.status, info.value.code) == (400, 50035)
    assert "In content: Must be 2000 or fewer in length." in info.value.text
    _, interaction = await r.hold()
    with pytest.raises(discord.HTTPException) as info:
        await interaction.response.send_message("y" * 2001)
    assert "In data.content" in info.value.text  # callback errors are nested under data
    assert r.fake.rejections[-1].code == 50035 and len(r.fake.channel_messages) == 1


def _embed(**fields: Any) -> discord.Embed:
    return discord.Embed(**fields)


def _with_fields(count: int, name: str = "n", value: str = "v") -> discord.Embed:
    embed = discord.Embed(title="t")
    for _ in range(count):
        embed.add_field(name=name, value=value)
    return embed


@pytest.mark.parametrize(
    ("embeds", "where"),
    [
        ([_embed(title="t" * 257)], "embeds.0.title"),
        ([_embed(description="d" * 4097)], "embeds.0.description"),
        ([_with_fields(26)], "embeds.0.fields"),
        ([_with_fields(1, name="n" * 257)], "embeds.0.fields.0.name"),
        ([_with_fields(1, value="v" * 1025)], "embeds.0.fields.0.value"),
        ([_embed(title="t").set_footer(text="f" * 2049)], "embeds.0.footer.text"),
        ([_embed(description="d" * 3001), _embed(description="d" * 3000)], "embeds"),
    ],
)
async def test_embed_limits(r: Rig, embeds: list[discord.Embed], where: str) -> None:
    with pytest.raises(discord.HTTPException) as info:
        await r.channel.send(embeds=embeds)
    assert info.value.code == 50035 and f"In {where}:" in info.value.text
    assert r.fake.channel_messages == []


async def test_embed_limits_exactly_at_the_edge_pass(r: Rig) -> None:
    edge = _with_fields(25, name="n" * 40, value="v" * 40).set_footer(text="f" * 2048)
    used = 1 + 25 * 80 + 2048  # title, fields, footer
    await r.channel.send(embeds=[edge, _embed(description="d" * (6000 - used))])
    with pytest.raises(discord.HTTPException) as info:
        await r.post({"embeds": [{"title": "t"}] * 11})  # discord.py refuses >10 itself
    assert "In embeds: Must be 10 or fewer" in info.value.text


def _row(count: int, **button: Any) -> dict[str, Any]:
    buttons = [
        {"type": 2, "style": 1, "custom_id": f"b{i}", "label": "go", **button} for i in range(count)
    ]
    return {"type": 1, "components": buttons}


@pytest.mark.parametrize(
    ("components", "where"),
    [
        ([_row(1)] * 6, "In components: Must be 5 or fewer"),
        ([_row(6)], "In components.0.components: Must be between 1 and 5"),
        ([_row(1, custom_id="c" * 101)], "In components.0.components.0.custom_id"),
        ([_row(1, label="l" * 81)], "In components.0.components.0.label"),
    ],
)
async def test_component_limits(r: Rig, components: list[dict[str, Any]], where: str) -> None:
    with pytest.raises(discord.HTTPException) as info:
        await r.post({"content": "pick", "components": components})
    assert info.value.code == 50035 and where in info.value.text
    button = {"type": 2, "style": 1, "label": "l" * 80}
    edge = [
        {
            "type": 1,
            "components": [{**button, "custom_id": f"{i}{j}".ljust(100, "c")} for j in range(5)],
        }
        for i in range(5)
    ]
    message = await r.post({"content": "pick", "components": edge})
    assert len(r.fake.messages[int(message["id"])].custom_ids) == 25


# -- rate limits and injected faults -----------------------------------------------------------


async def test_429_is_retried_by_discord_py_after_retry_after(r: Rig) -> None:
    r.fake.rate_limit(2, route=Routes.CREATE_MESSAGE, retry_after=0.25)
    started = time.monotonic()
    message = await r.channel.send("after the limit")
    assert time.monotonic() - started >= 0.5
    assert [m.id for m in r.fake.channel_messages] == [message.id]
    assert [kind for kind, *_ in r.fake.faults.served] == ["rate_limit", "rate_limit"]
    assert r.fake.faults.armed == []


async def test_429_on_webhook_routes_and_global(r: Rig) -> None:
    record, interaction = await r.hold()
    await interaction.response.defer()
    r.fake.rate_limit(1, route=Routes.FOLLOWUP, retry_after=0.1, is_global=True)
    await interaction.followup.send("through")
    assert [f.content for f in record.followups] == ["through"]
    assert r.fake.faults.served[0][:2] == ("rate_limit", "POST")


async def test_429_five_times_gives_up_with_429(r: Rig) -> None:
    r.fake.rate_limit(5, retry_after=0.01)
    with pytest.raises(discord.HTTPException) as info:
        await r.channel.send("never")
    assert info.value.status == 429 and r.fake.channel_messages == []


async def test_5xx_retried_or_raised_like_discord_py_does(r: Rig) -> None:
    r.fake.fail(1, status=500, route=Routes.CREATE_MESSAGE)
    await r.channel.send("after one 500")  # discord.py sleeps 1 s and retries
    r.fake.fail(1, status=503, route=Routes.CREATE_MESSAGE)
    with pytest.raises(discord.DiscordServerError) as info:
        await r.channel.send("503 is not retried on bot routes")
    assert info.value.status == 503
    r.fake.fail(2, status=502)  # any route; edits are not matched by CREATE_MESSAGE
    with pytest.raises(ValueError, match="status must be"):
        r.fake.fail(1, status=404)
    r.fake.clear_faults()
    await r.channel.send("clear")
    assert [m.content for m in r.fake.channel_messages] == ["after one 500", "clear"]


async def test_hung_request_times_out_but_takes_effect_late(r: Rig) -> None:
    r.fake.hang(1, delay=0.5, route=Routes.CREATE_MESSAGE)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(r.channel.send("slow"), 0.1)
    assert r.fake.channel_messages == []
    await r.fake.events.wait_kind("channel_message", timeout=3)
    assert [m.content for m in r.fake.channel_messages] == ["slow"]


# -- nonce, deleted messages, attachments -------------------------------------------------------


async def test_enforce_nonce_returns_the_first_message(r: Rig) -> None:
    first = await r.channel.send("result", nonce="job-42")  # discord.py sets enforce_nonce
    again = await r.channel.send("result", nonce="job-42")
    assert again.id == first.id and len(r.fake.channel_messages) == 1
    assert (
        r.fake.events.of_kind("duplicate_channel_message")[0].message is r.fake.messages[first.id]
    )
    other = await r.channel.send("result", nonce="job-43")
    assert other.id != first.id
    await r.post({"content": "no enforce", "nonce": "job-44"})
    await r.post({"content": "no enforce", "nonce": "job-44"})  # without enforce_nonce: a copy
    r.fake.advance_clock(301)
    later = await r.channel.send("result", nonce="job-42")  # outside the window: a new message
    assert later.id != first.id and len(r.fake.channel_messages) == 5


async def test_deleted_message_is_unknown_message(r: Rig) -> None:
    message = await r.channel.send("to be deleted")
    deleted = asyncio.ensure_future(r.bot.wait_for("raw_message_delete", timeout=5))
    await r.fake.delete_message(r.fake.messages[message.id], by=r.alice)
    assert (await deleted).message_id == message.id
    with pytest.raises(discord.NotFound) as info:
        await message.edit(content="edited")
    assert info.value.code == 10008
    with pytest.raises(discord.NotFound):
        await message.delete()

    record, interaction = await r.hold()
    await interaction.response.send_message("original")
    assert record.original is not None
    await r.fake.delete_message(record.original, by=r.alice)
    with pytest.raises(discord.NotFound) as info:
        await interaction.edit_original_response(content="result")
    assert info.value.code == 10008
    await interaction.followup.send("a followup still works")
    assert [(x.status, x.code) for x in r.fake.rejections] == [(404, 10008)] * 3


async def test_attachment_option_carries_description_and_content_type(r: Rig) -> None:
    upload = r.fake.add_attachment("cat.png", PNG, "image/png", description="a red square")
    _, interaction = await r.hold(image=upload)
    image = interaction.namespace.image
    assert isinstance(image, discord.Attachment)
    assert (image.description, image.content_type, image.filename) == (
        "a red square",
        "image/png",
        "cat.png",
    )
    assert await image.read() == PNG
    await interaction.response.send_message("ok")
