"""A small fake Discord (REST + websocket gateway on 127.0.0.1) for end-to-end tests of the real discord.py.

Usage::

    async with FakeDiscord() as fake:
        guild = fake.add_guild("Test Guild")              # owner + @everyone + the bot as members
        general = guild.add_channel("general")
        nsfw = guild.add_channel("nsfw", nsfw=True)
        alice = fake.add_user("alice"); guild.add_member(alice)
        admin = fake.add_user("admin"); guild.add_member(admin, manage_guild=True)
        with fake.patch_discord():                        # Route.BASE + DEFAULT_GATEWAY -> fake
            async with fake.running(bot):                 # login, connect task, ready; close on exit
                it = await fake.send_slash(alice, general, "imagine", {"prompt": "a castle"})
                assert (await it.wait_callback()).type == 5
                followup = await it.wait_followup()
                png = followup.files[0].data
                click = await fake.send_component(alice, followup.message, "reroll")
                assert (await click.wait_callback()).type == 7
        assert fake.unhandled == []

State and factories (:class:`FakeDiscord`):
    ``FakeDiscord(*, token=<a fresh one in Discord's shape>, bot_name=..., attachment_size_limit=10 MiB,
    heartbeat_interval_ms=41250, privileged_intents=0, interaction_deadline_s=3.0,
    token_lifetime_s=900, nonce_window_s=300)`` (``token=None`` accepts any token; an IDENTIFY
    with a privileged intent not in ``privileged_intents`` is closed with 4014, as Discord does);
    ``start()``/``stop()`` or ``async with``; ``base_url``, ``api_base``, ``gateway_url``; ``patch_discord()`` (sync context manager); ``running(client, wait_until_ready=True)``.
    ``add_user(name, *, bot=False) -> FakeUser``; ``add_guild(name, *, owner=None) -> FakeGuild``;
    ``FakeGuild.add_channel(name, *, nsfw=False)``, ``.add_role(name, permissions)``,
    ``.add_member(user, *, roles=(), manage_guild=False)``, ``.permissions_for(user)``;
    ``add_attachment(filename, data, content_type=None, *, description=None) -> FakeAttachment``
    (served from the fake's URL; ``description`` is the alt text).
    Ids come from :class:`Snowflakes`: the same ids in the same order on every run.

Gateway: ``await wait_ready()``, ``await send_reconnect()`` (op 7) then ``await wait_resumed()``,
``await dispatch(event, data)``; ``gateway.sent`` / ``gateway.received`` / ``gateway.sequences``.
``await drop_gateway(code=None, down_for=0.0, resumable=True)``: the connection dropped without a
RECONNECT (``None``: the TCP connection cut, the client sees 1006; or a close code such as 4000),
new connections refused with 503 for ``down_for`` seconds (``math.inf``: until
``restore_gateway()``); ``resumable=False`` forgets the session (the RESUME gets INVALID_SESSION,
the client IDENTIFYs again). A RESUME replays the session's dispatches after the client's last
sequence, as Discord does. ``gateway.drops``, ``.refused``, ``.replayed``; ``await
gateway.wait_refused(n)``, ``.wait_live()``, ``.wait_closed()``, ``.wait_identified(n)``.
zlib-stream transport compression is honoured when the client asks for it (discord.py does by default).

Interactions: ``send_slash(user, channel, command, options=None)`` (``command`` may be ``"lora use"`` or
``("lora", "use")``; options are typed from the synced command, a :class:`FakeAttachment` value fills
``resolved.attachments``), ``send_autocomplete(user, channel, command, options, focused)``,
``send_component(user, message, custom_id, *, component_type=2, values=None)``,
``send_modal_submit(user, opened_by, values)`` (submits the modal the bot answered ``opened_by`` with). Each returns an
:class:`InteractionRecord`: ``events`` (ordered :class:`RecordedEvent` with ``kind``, ``payload``, ``files``,
``message``, ``at``), ``callback``, ``followups``, ``edits``, ``original``, ``await wait_callback()``,
``wait_followup(nth=0)``, ``wait_edit(nth=0)``, ``wait_choices()``, ``wait_kind(kind, nth=0)``, ``wait_for(predicate)``. Event kinds:
``callback``, ``followup``, ``get_original``, ``edit_original``, ``delete_original``, ``get_followup``,
``edit_followup``, ``delete_followup``. The fake answers like Discord: a second callback gets 400 (40060),
a followup before the callback gets 404 (10015).

Discord's rules, enforced (each refusal is also kept in ``rejections``, a list of :class:`Rejection`):
    the first response to an interaction later than ``interaction_deadline_s`` after it was sent gets
    404 ``Unknown interaction`` (10062); once ``token_lifetime_s`` has passed, the webhook routes
    (followups, ``@original``) get 401 ``Invalid Webhook Token`` (50027); uploads above
    ``attachment_size_limit`` in one request get 413 ``Request entity too large`` (40005); content over
    2,000 characters, embed limits (title 256, description 4096, 25 fields of 256/1024, footer 2048,
    6000 in all, 10 embeds), more than 5 action rows or 5 buttons a row, custom_id over 100, label
    over 80, a select sharing its row or with more than 25 options, more than 10 attachments or a
    nonce over 25 get 400 ``Invalid Form Body`` (50035) with
    Discord's nested ``errors``; a deleted message (also ``@original``) gets 404 ``Unknown Message``
    (10008). ``nonce`` + ``enforce_nonce`` on a channel message within ``nonce_window_s`` returns the
    first message (recorded as ``duplicate_channel_message``).
    A modal (callback type 9) is accepted only as the first answer to a command or component
    (after a defer: 40060; to a modal submit: 50035), title up to 45, text inputs only.
    Clock: ``now()``, ``advance_clock(seconds)``, ``expire_interaction(record)``.
    ``await delete_message(message, by=user)``: deleted as a user would (MESSAGE_DELETE is sent).

Injected faults (for the next ``count`` matching requests; ``route`` is ``None`` for any API route, a
:class:`Routes` string such as ``Routes.CREATE_MESSAGE`` or a predicate on the request):
    ``rate_limit(count, route=, retry_after=0.3, is_global=False)`` (429 with Discord's body and
    headers, which discord.py honours), ``fail(count, status=500|502|503|504, route=)``,
    ``hang(count, delay=, route=)`` (answered only after ``delay``; the returned fault's
    ``wait_held(n)`` and ``wait_settled(n)`` await the held and the landed requests), ``clear_faults()``;
    ``faults.served`` lists what was served.

Recorded elsewhere: ``registered_commands`` (``{None: global, guild_id: [...]}``), ``channel_messages``,
``messages`` (by id), ``events`` (every REST event, also ``channel_message``, ``edit_channel_message``, ...),
``unhandled`` (``"METHOD /path"`` of routes the fake does not know; they get ``{}``).

discord.py waits ``guild_ready_timeout`` (2 s by default) after the last GUILD_CREATE before ``on_ready``;
pass ``guild_ready_timeout=0.1`` to the client in tests to keep them fast.
"""

from .faults import Routes
from .models import (
    ALL_PERMISSIONS,
    DEFAULT_PERMISSIONS,
    FakeAttachment,
    FakeChannel,
    FakeGuild,
    FakeMember,
    FakeMessage,
    FakeRole,
    FakeUser,
    Perm,
    Snowflakes,
)
from .recorder import EventLog, InteractionRecord, RecordedEvent, UploadedFile
from .rules import Rejection, RuleError
from .server import FakeDiscord

__all__ = [
    "ALL_PERMISSIONS",
    "DEFAULT_PERMISSIONS",
    "EventLog",
    "FakeAttachment",
    "FakeChannel",
    "FakeDiscord",
    "FakeGuild",
    "FakeMember",
    "FakeMessage",
    "FakeRole",
    "FakeUser",
    "InteractionRecord",
    "Perm",
    "RecordedEvent",
    "Rejection",
    "Routes",
    "RuleError",
    "Snowflakes",
    "UploadedFile",
]
