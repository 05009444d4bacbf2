"""The real, unmodified discord.py client against the fake Discord in ``tests/fake_discord``."""

from __future__ import annotations

import asyncio
import io
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import discord
import pytest
from discord import app_commands
from discord.ext import commands
from PIL import Image

from tests.fake_discord import FakeChannel, FakeDiscord, FakeGuild, FakeUser

LORAS = ["anime", "watercolor", "pixel-art", "ink"]


def make_png(color: tuple[int, int, int] = (200, 30, 60)) -> bytes:
    """A real 8x8 PNG."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = make_png()


class RerollView(discord.ui.View):
    """A persistent view: its button works across restarts thanks to the fixed custom_id."""

    def __init__(self) -> None:
        super().__init__(timeout=None)

    @discord.ui.button(label="Reroll", custom_id="reroll", style=discord.ButtonStyle.primary)
    async def reroll(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.edit_message(content="rerolled", view=self)


class TinyBot(commands.Bot):
    """A minimal bot with the kinds of commands the real bot has."""

    def __init__(self, guild_id: int) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=discord.Intents.default(),
            guild_ready_timeout=0.05,
        )
        self.guild_id = guild_id
        self.read_attachments: list[bytes] = []
        self.seen_nsfw: list[bool] = []

    async def setup_hook(self) -> None:
        self.add_view(RerollView())
        tree = self.tree

        @tree.command(description="Make an image")
        @app_commands.describe(prompt="What to draw")
        async def imagine(interaction: discord.Interaction, prompt: str, steps: int = 20) -> None:
            self.seen_nsfw.append(bool(getattr(interaction.channel, "nsfw", False)))
            await interaction.response.defer(thinking=True)
            await interaction.edit_original_response(content=f"working on {prompt} ({steps} steps)")
            await interaction.followup.send(
                content=f"done: {prompt}",
                file=discord.File(io.BytesIO(PNG), "image.png"),
                view=RerollView(),
            )

        @tree.command(description="Read an attachment")
        async def inspect(interaction: discord.Interaction, image: discord.Attachment) -> None:
            data = await image.read()
            self.read_attachments.append(data)
            await interaction.response.send_message(
                f"{image.filename}: {len(data)} bytes", ephemeral=True
            )

        @tree.command(description="Post to the channel")
        @app_commands.checks.has_permissions(manage_guild=True)
        async def announce(interaction: discord.Interaction, text: str) -> None:
            await interaction.response.send_message("posting", ephemeral=True)
            assert isinstance(interaction.channel, discord.TextChannel)
            message = await interaction.channel.send(
                text, file=discord.File(io.BytesIO(PNG), "a.png")
            )
            await message.edit(content=text + " (edited)")

        @announce.error
        async def announce_error(
            interaction: discord.Interaction, exc: app_commands.AppCommandError
        ) -> None:
            await interaction.response.send_message(f"denied: {type(exc).__name__}", ephemeral=True)

        @tree.command(description="Exercise every webhook route")
        async def ping(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("pong")
            original = await interaction.original_response()
            assert original.content == "pong"
            temp = await interaction.followup.send("temp", wait=True)
            await temp.edit(content="temp 2")
            await temp.delete()
            await interaction.delete_original_response()

        lora = app_commands.Group(name="lora", description="Styles")

        @lora.command(name="use", description="Switch style")
        async def lora_use(interaction: discord.Interaction, name: str) -> None:
            await interaction.response.send_message(f"using {name}")

        @lora_use.autocomplete("name")
        async def lora_complete(
            interaction: discord.Interaction, current: str
        ) -> list[app_commands.Choice[str]]:
            return [app_commands.Choice(name=n, value=n) for n in LORAS if current in n]

        tree.add_command(lora)
        guild = discord.Object(self.guild_id)
        tree.copy_global_to(guild=guild)
        tree.clear_commands(guild=None)
        await tree.sync(guild=guild)


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves tasks running (this fixture is torn down after ``world``)."""
    yield
    await asyncio.sleep(0)
    leaked = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    assert leaked == []


@dataclass
class World:
    """The fake, its guild and the people and places in it."""

    fake: FakeDiscord
    guild: FakeGuild
    general: FakeChannel
    nsfw: FakeChannel
    alice: FakeUser
    admin: FakeUser
    bot: TinyBot


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with FakeDiscord() as fake:
        guild = fake.add_guild("Test Guild")
        general = guild.add_channel("general")
        nsfw = guild.add_channel("after-dark", nsfw=True)
        alice = fake.add_user("alice")
        guild.add_member(alice)
        admin = fake.add_user("admin")
        guild.add_member(admin, manage_guild=True)
        with fake.patch_discord():
            bot = TinyBot(guild.id)
            async with fake.running(bot):
                yield World(fake, guild, general, nsfw, alice, admin, bot)
        assert fake.unhandled == []


async def test_login_syncs_commands_to_guild(world: World) -> None:
    fake = world.fake
    names = sorted(c["name"] for c in fake.registered_commands[world.guild.id])
    assert names == ["announce", "imagine", "inspect", "lora", "ping"]
    assert fake.registered_commands.get(None, []) == []
    cached = world.bot.get_guild(world.guild.id)
    assert cached is not None and cached.owner_id == world.guild.owner.id
    channel = cached.get_channel(world.nsfw.id)
    assert isinstance(channel, discord.TextChannel) and channel.is_nsfw()
    assert fake.gateway.received[0]["op"] == 1  # discord.py heartbeats right after HELLO
    assert (
        fake.gateway.received[1]["op"] == 2
        and fake.gateway.received[1]["d"]["intents"] == discord.Intents.default().value
    )
    # discord.py asks for transport compression (zlib-stream unless zstandard is installed).
    assert fake.gateway.compression[0] in ("zlib-stream", "zstd-stream")


async def test_defer_followup_png_and_persistent_button(world: World) -> None:
    fake = world.fake
    it = await fake.send_slash(
        world.alice, world.nsfw, "imagine", {"prompt": "a castle", "steps": 5}
    )
    callback = await it.wait_callback()
    assert callback.type == 5
    edit = await it.wait_edit()
    assert edit.content == "working on a castle (5 steps)"
    followup = await it.wait_followup()
    assert followup.content == "done: a castle"
    assert followup.file_bytes() == [PNG]
    assert followup.files[0].filename == "image.png"
    assert world.bot.seen_nsfw == [True]
    message = followup.message
    assert message is not None and message.custom_ids == ["reroll"]
    assert [e.kind for e in it.events] == ["callback", "edit_original", "followup"]
    assert [e.at for e in it.events] == sorted(e.at for e in it.events)

    click = await fake.send_component(world.alice, message, "reroll")
    update = await click.wait_callback()
    assert update.type == 7
    assert message.content == "rerolled" and message.attachments[0].data == PNG


async def test_attachment_option_bytes_read_back(world: World) -> None:
    fake = world.fake
    upload = fake.add_attachment("input.png", make_png((1, 2, 3)), "image/png")
    it = await fake.send_slash(world.alice, world.general, "inspect", {"image": upload})
    callback = await it.wait_callback()
    assert callback.type == 4
    assert callback.content == f"input.png: {len(upload.data)} bytes"
    assert callback.data["flags"] & 64  # ephemeral
    assert world.bot.read_attachments == [upload.data]


async def test_subcommand_and_autocomplete(world: World) -> None:
    fake = world.fake
    it = await fake.send_autocomplete(
        world.alice, world.general, ("lora", "use"), {"name": "a"}, focused="name"
    )
    choices = await it.wait_choices()
    assert [c["value"] for c in choices] == ["anime", "watercolor", "pixel-art"]
    used = await fake.send_slash(world.alice, world.general, "lora use", {"name": "ink"})
    assert (await used.wait_callback()).content == "using ink"


async def test_manage_server_permission_and_channel_messages(world: World) -> None:
    fake = world.fake
    denied = await fake.send_slash(world.alice, world.general, "announce", {"text": "hi"})
    assert (await denied.wait_callback()).content == "denied: MissingPermissions"
    assert fake.channel_messages == []

    allowed = await fake.send_slash(world.admin, world.general, "announce", {"text": "hello"})
    assert (await allowed.wait_callback()).content == "posting"
    await fake.events.wait_for(lambda e: e.kind == "edit_channel_message")
    [message] = fake.channel_messages
    assert message.channel_id == world.general.id and message.content == "hello (edited)"
    attachment = message.attachments[0]
    async with world.bot.http._HTTPClient__session.get(
        attachment.payload(fake.base_url)["url"]
    ) as resp:  # type: ignore[attr-defined]
        assert await resp.read() == PNG


async def test_reconnect_resumes_and_commands_still_work(world: World) -> None:
    fake = world.fake
    resumed = asyncio.Event()

    async def on_resumed() -> None:
        resumed.set()

    world.bot.add_listener(on_resumed)
    first = await fake.send_slash(world.alice, world.general, "lora use", {"name": "anime"})
    await first.wait_callback()

    await fake.send_reconnect()
    await fake.wait_resumed()
    await asyncio.wait_for(resumed.wait(), 5)
    assert fake.gateway.identify_count == 1 and fake.gateway.resume_count == 1

    after = await fake.send_slash(world.alice, world.general, "lora use", {"name": "ink"})
    assert (await after.wait_callback()).content == "using ink"
    sequences = fake.gateway.sequences
    assert sequences == sorted(set(sequences)) and sequences[0] == 1


@pytest.mark.parametrize("code", [None, 4000], ids=["tcp-cut", "close-4000"])
async def test_hard_drop_resumes_without_identify(world: World, code: int | None) -> None:
    fake = world.fake
    await fake.drop_gateway(code)  # no RECONNECT: the connection just ends
    await fake.wait_resumed()
    gateway = fake.gateway
    assert gateway.identify_count == 1 and gateway.resume_count == 1 and gateway.drops == [code]
    after = await fake.send_slash(world.alice, world.general, "lora use", {"name": "ink"})
    assert (await after.wait_callback()).content == "using ink"


async def test_gateway_outage_refuses_connections_until_restored(world: World) -> None:
    fake = world.fake
    await fake.drop_gateway(down_for=math.inf)
    await fake.gateway.wait_refused(1)  # discord.py backs off and tries again meanwhile
    assert fake.gateway.current is None and fake.gateway.resume_count == 0
    # REST still works while the gateway is down.
    channel = await world.bot.fetch_channel(world.general.id)
    assert channel.id == world.general.id
    fake.restore_gateway()
    await fake.wait_resumed(timeout=15)  # discord.py's backoff: up to 4 s after two refusals
    assert fake.gateway.identify_count == 1
    after = await fake.send_slash(world.alice, world.general, "lora use", {"name": "anime"})
    assert (await after.wait_callback()).content == "using anime"


async def test_drop_of_a_forgotten_session_identifies_again(world: World) -> None:
    fake = world.fake
    ready = asyncio.Event()

    async def on_ready() -> None:
        ready.set()

    async def identify_at_once(shard_id: int | None, *, initial: bool = False) -> None:
        """discord.py waits 5 s before a repeated IDENTIFY (Discord's identify rate)."""

    world.bot.add_listener(on_ready)
    world.bot.before_identify_hook = identify_at_once  # type: ignore[method-assign]
    await fake.drop_gateway(4000, resumable=False)
    await fake.gateway.wait_identified(2)
    await asyncio.wait_for(ready.wait(), 5)  # a new session: discord.py is ready again
    invalid = [m for m in fake.gateway.sent if m.get("op") == 9]
    assert invalid == [{"op": 9, "d": False}] and fake.gateway.resume_count == 0
    after = await fake.send_slash(world.alice, world.general, "lora use", {"name": "ink"})
    assert (await after.wait_callback()).content == "using ink"


async def test_resume_replays_the_dispatches_after_the_clients_sequence() -> None:
    async with FakeDiscord(token=None) as fake:
        fake.add_guild("One")
        fake.add_guild("Two")
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(fake.gateway_url) as ws:
                assert (await ws.receive_json())["op"] == 10
                await ws.send_json({"op": 2, "d": {"token": "t", "intents": 0}})
                ready = await ws.receive_json()
                assert ready["t"] == "READY" and ready["s"] == 1
            # The client saw READY only; the two GUILD_CREATEs were lost with the connection.
            session = ready["d"]["session_id"]
            async with http.ws_connect(fake.gateway_url) as ws:
                await ws.receive_json()  # HELLO
                await ws.send_json({"op": 6, "d": {"token": "t", "session_id": session, "seq": 1}})
                replay = [await ws.receive_json() for _ in range(3)]
    assert [(m["t"], m["s"]) for m in replay] == [
        ("GUILD_CREATE", 2),
        ("GUILD_CREATE", 3),
        ("RESUMED", 4),
    ]
    assert fake.gateway.replayed == 2


async def test_original_and_followup_get_edit_delete(world: World) -> None:
    it = await world.fake.send_slash(world.alice, world.general, "ping")
    deleted = await it.wait_kind("delete_original")
    kinds = [e.kind for e in it.events]
    assert kinds == [
        "callback",
        "get_original",
        "followup",
        "edit_followup",
        "delete_followup",
        "delete_original",
    ]
    followup = it.followups[0].message
    assert followup is not None and followup.deleted and followup.content == "temp 2"
    assert deleted.message is it.original and it.original.deleted


async def test_second_callback_is_rejected_like_discord(world: World) -> None:
    fake = world.fake
    it = await fake.send_slash(world.alice, world.general, "lora use", {"name": "anime"})
    await it.wait_callback()
    # The fake refuses a second acknowledgement with Discord's error code.
    webhook_route = discord.http.Route("POST", f"/interactions/{it.id}/{it.token}/callback")
    with pytest.raises(discord.HTTPException) as info:
        await world.bot.http.request(webhook_route, json={"type": 4, "data": {"content": "again"}})
    assert info.value.code == 40060


async def test_privileged_intents_are_refused_like_discord() -> None:
    async with FakeDiscord() as fake:
        with fake.patch_discord():
            client = discord.Client(intents=discord.Intents.all())
            await client.login(fake.token)
            with pytest.raises(discord.PrivilegedIntentsRequired):
                await asyncio.wait_for(client.connect(reconnect=True), 5)
            await client.close()


async def test_wrong_token_fails_login() -> None:
    async with FakeDiscord(token="right") as fake:
        with fake.patch_discord():
            client = discord.Client(intents=discord.Intents.default())
            with pytest.raises(discord.LoginFailure):
                await client.login("wrong")
            await client.close()
