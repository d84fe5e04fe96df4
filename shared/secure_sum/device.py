"""``user-noise = distributed`` on the device: the secure-aggregation stages, one per message.

The device's secrets (mask and channel keys, self-mask seeds, the shares it holds for its
neighbours) live in the node's ``context.state`` for the run, never in a reply. The plan (noise
share, threshold, minimum) is computed here from the run's settings, and the device signs its
SHA-256 with every input (the audit holds it to the config). On a real device the settings may
not be weaker than the device's own floor: its ``node-config`` values of ``user-epsilon``,
``delta``, ``secure-dropout``, ``secure-groups`` (at most these: more groups make each sum
smaller), ``secure-colluders`` and ``secure-neighbours`` (at least these), else the code's
defaults (one group); a weaker plan is refused. Before it masks an input the
device also checks its durable record of what it already released (:mod:`shared.secure_sum.spend`):
a release of a run it answered is refused, and so is one that would take its user past its
``user-epsilon-cap`` (node config; on a real device without one, the default ``user-epsilon``).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message

from client.local_data import LocalData
from client.request import DeviceRequest
from client.statistics import contribution
from shared.config import DEFAULTS, resolve
from shared.messages import (
    MASKED_KEY,
    SECURE_CONFIRM,
    SECURE_INPUT,
    SECURE_KEYS,
    SECURE_SHARE,
    SECURE_UNMASK,
    message_config,
    secure_fields,
    secure_reply,
)
from shared.privacy.spend_signature import public_pem, sign_record
from shared.secure_sum import identity as identity_keys
from shared.secure_sum.session import DeviceSession, ProtocolRefusal
from shared.secure_sum.plan import ReleasePlan, SecurePlan
from shared.secure_sum.records import (
    ConfirmReply,
    ConfirmRequest,
    InputRequest,
    KeysReply,
    KeysRequest,
    MissingField,
    ShareReply,
    ShareRequest,
    UnmaskReply,
    UnmaskRequest,
)
from shared.secure_sum.spend import SPEND_FILE, load_spend, save_spend, spend_lock
from shared.releases import RELEASES, check_release_settings, check_secure_settings, group_plan, secure_plan
from shared.secure_sum.groups import group_rosters

SESSION_KEY = "secure-sum"


def _session(context: Context) -> DeviceSession:
    if SESSION_KEY not in context.state.config_records:
        raise ProtocolRefusal("no secure-aggregation session on this device: the key stage did not run")
    return DeviceSession.from_record(dict(context.state.config_records[SESSION_KEY]))


def _keep(context: Context, session: DeviceSession) -> None:
    context.state[SESSION_KEY] = ConfigRecord(session.to_record())


PLAN_KEYS = ("user-epsilon", "delta", "popularity-budget-share", "selection-budget-share", "secure-neighbours", "secure-dropout", "secure-colluders",
             "secure-groups")


@functools.lru_cache(maxsize=16)
def _planned(settings: tuple, devices: int, dimensions: tuple) -> SecurePlan:
    """The plan for these settings, calibrated once per worker process: the noise calibration
    (a bisection over Skellam RDP) was half of a device's time per stage when redone each time."""
    config = resolve(None, {"privacy": "user", **dict(settings)})
    try:
        check_release_settings(config)
        check_secure_settings(config)
    except ValueError as exc:
        raise ProtocolRefusal(f"the server's plan: {exc}: refusing it") from None
    return secure_plan(config, devices, list(dimensions))


@functools.lru_cache(maxsize=16)
def _planned_group(settings: tuple, population: int, size: int, dimensions: tuple) -> SecurePlan:
    """One group's plan (``secure-groups`` above 1), for the group's size in this device's roster."""
    config = resolve(None, {"privacy": "user", **dict(settings)})
    try:
        check_release_settings(config)
        check_secure_settings(config)
        return group_plan(config, population, size, list(dimensions))
    except ValueError as exc:
        raise ProtocolRefusal(f"the server's plan: {exc}: refusing it") from None


AT_MOST = ("user-epsilon", "delta", "secure-dropout", "secure-groups")  # larger is weaker (more groups: smaller sums)
AT_LEAST = ("secure-colluders", "secure-neighbours")  # smaller is weaker


def check_floor(settings: dict, node_config: dict, on_device: bool) -> None:
    """Refuse settings weaker than this device's floor (its node config; on a real device the
    code's defaults where it sets none; in a simulation the researcher sets both sides)."""
    for key in AT_MOST + AT_LEAST:
        if key in node_config:
            floor = float(node_config[key])
        elif on_device:
            floor = float(DEFAULTS[key])
        else:
            continue
        asked = float(settings.get(key, DEFAULTS[key]))
        if not math.isfinite(asked) and not (key == "user-epsilon" and asked == math.inf):
            raise ProtocolRefusal(f"the server asks for {key} = {asked:g}: not a number; refusing the plan")
        if (asked > floor) if key in AT_MOST else (asked < floor):
            raise ProtocolRefusal(f"the server asks for {key} = {asked:g}, weaker than this device's {floor:g}: refusing the plan")


SPEND_KEY = "user-spend"  # the node state's copy of the spend record (the file, where there is a state folder)


def spend_cap(settings: dict, node_config: dict, on_device: bool) -> float:
    """The user-level epsilon this device will not pass over all the releases it answers: its
    node config's ``user-epsilon-cap``; on a real device without one, the default budget; in a
    simulation without one, the run's own budget (the researcher sets both sides)."""
    if "user-epsilon-cap" in node_config:
        return float(node_config["user-epsilon-cap"])
    return float(DEFAULTS["user-epsilon"] if on_device else settings.get("user-epsilon", DEFAULTS["user-epsilon"]))


def _spend_path(context: Context, msg: Message, on_device: bool):
    """Where the spend record lives: a real device's own ``state-dir`` (never a folder the server's
    config names), a simulated device's state folder."""
    from client.state import state_path

    if on_device:
        named = context.node_config.get("state-dir")
        return Path(str(named)) / SPEND_FILE if named else None
    path = state_path(context, message_config(msg))
    return None if path is None else path.parent / SPEND_FILE


def _answer_within_budget(msg: Message, context: Context, data: LocalData, plan: SecurePlan, release: ReleasePlan) -> None:
    """Refuse a repeat or a release past the cap; else record it durably (before the input
    leaves), under the spend file's lock. A real device needs a ``state-dir``: the run's node
    state alone would forget the spend at the next run."""
    path = _spend_path(context, msg, data.on_device)
    if path is None and data.on_device:
        raise ProtocolRefusal("no state-dir in this device's node config: it cannot keep what it released across runs, so it releases nothing")
    with spend_lock(path):
        kept = context.state.config_records[SPEND_KEY]["json"] if SPEND_KEY in context.state.config_records else None
        spend = load_spend(path, str(kept) if kept is not None else None, data.user_id)
        asked = {k: v for k, v in message_config(msg).items() if k in PLAN_KEYS}
        spend.answered.append(spend.admit(str(msg.metadata.run_id), plan, release, spend_cap(asked, dict(context.node_config), data.on_device)))
        context.state[SPEND_KEY] = ConfigRecord({"json": save_spend(path, spend)})


def _identity_key(msg: Message, context: Context, data: LocalData):
    """This device's long-term identity key: its node config's ``identity-key`` (a deployed
    device must name one, listed in its roster), else a simulated device's own, in its state folder."""
    from client.state import state_path

    named = context.node_config.get("identity-key")
    if named:
        return identity_keys.load_identity(Path(str(named)))
    if data.on_device:
        raise ProtocolRefusal("no identity-key in this device's node config: the secure sum needs a signing identity in the roster")
    state = state_path(context, message_config(msg))
    if state is None:
        raise ProtocolRefusal("no state folder (device-state-dir) to keep this simulated device's identity key in")
    return identity_keys.load_or_create_identity(state.parent / identity_keys.IDENTITY_KEY_FILE)


def _roster(msg: Message, context: Context, data: LocalData) -> identity_keys.Roster:
    """The identity keys this device trusts: its node config's ``roster`` file, else (a simulated
    device) the keys in the simulated devices' own state folders."""
    named = context.node_config.get("roster")
    if named:
        return identity_keys.roster_from_file(str(named))
    if data.on_device:
        raise ProtocolRefusal("no roster in this device's node config: it cannot tell its neighbours' keys from the server's")
    return identity_keys.roster_of_simulated_devices(str(message_config(msg).get("device-state-dir", "")))


def _groups(msg: Message) -> int:
    """The server's ``secure-groups``: a whole number of at least 1, or the plan is refused."""
    value = message_config(msg).get("secure-groups", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ProtocolRefusal(f"secure-groups {value!r} is not a number of groups: refusing the plan")
    return value


def _group_roster(msg: Message, context: Context, data: LocalData, session: DeviceSession) -> identity_keys.Roster:
    """The identity keys this device aggregates with: its whole roster, or with ``secure-groups``
    above 1 its own group of it (:func:`~shared.secure_sum.groups.group_rosters`, drawn from the
    roster's seed, never from the server's word). Every check of the protocol (the population,
    the participants, the graph, the survivor-set signatures) then holds within the group."""
    roster = _roster(msg, context, data)
    groups = _groups(msg)
    if groups == 1:
        return roster
    own = identity_keys.public_hex(_identity_key(msg, context, data))
    try:
        arcs = group_rosters(sorted(roster.keys), roster.graph_seed(session.run), groups)
    except ValueError as exc:
        raise ProtocolRefusal(f"secure-groups {groups}: {exc}: refusing the plan") from None
    mine = [arc for arc in arcs if own in arc]
    if not mine:
        raise ProtocolRefusal("this device's identity key is not in its roster: it belongs to no group")
    return identity_keys.Roster(mine[0], roster.seed)


def _participants(request: ShareRequest) -> dict[int, str]:
    """The share stage's participant list (protocol index -> identity key); refused when an index
    repeats or the two lists differ in length (a dict would keep one silently)."""
    indices, keys = request.participant_indices, request.participant_identities
    if len(indices) != len(keys) or len(set(indices)) != len(indices):
        raise ProtocolRefusal("the participant list repeats an index or gives indices and identity keys of different lengths")
    return dict(zip(indices, keys))


def _plan(msg: Message, context: Context, data: LocalData, session: DeviceSession, dimensions: list[int]) -> SecurePlan:
    """The plan this device computes itself: for the population the server names (held to the
    roster's at the share stage), or with ``secure-groups`` above 1 its group's, sized from the
    roster."""
    asked = {k: v for k, v in message_config(msg).items() if k in PLAN_KEYS}
    check_floor(asked, dict(context.node_config), data.on_device)
    if _groups(msg) == 1:
        return _planned(tuple(sorted(asked.items())), session.devices, tuple(dimensions))
    roster = _roster(msg, context, data)
    group = _group_roster(msg, context, data, session)
    return _planned_group(tuple(sorted(asked.items())), len(roster), len(group), tuple(dimensions))


def stage_reply(msg: Message, context: Context, data: LocalData, stage: str, client_id: str, identity: str, key) -> Message:
    """This device's reply to one stage of the protocol."""
    fields = secure_fields(msg)
    try:
        return _answer(msg, context, data, stage, fields, client_id, identity, key)
    except (MissingField, TypeError) as exc:
        raise ProtocolRefusal(f"{stage}: {exc}") from None


def _answer(msg: Message, context: Context, data: LocalData, stage: str, fields: dict, client_id: str, identity: str, key) -> Message:
    if stage == SECURE_KEYS:
        asked = KeysRequest.of(fields)
        if asked.dimensions[0] != data.num_items:
            raise ProtocolRefusal(f"a {RELEASES[0].name} release of {asked.dimensions[0]} items for a catalog of {data.num_items}")
        session = DeviceSession(index=asked.index, devices=asked.devices, run=str(msg.metadata.run_id))
        mask_public, channel_public = session.public_keys(len(asked.dimensions))
        me = _identity_key(msg, context, data)
        signature = identity_keys.sign(me, identity_keys.key_bundle_message(session.run, session.index, mask_public, channel_public))
        _keep(context, session)
        reply = KeysReply(mask_public, channel_public, asked.dimensions, identity_keys.public_hex(me), signature)
        return secure_reply(msg, reply.fields())
    session = _session(context)
    if stage == SECURE_SHARE:
        shared = ShareRequest.of(fields)
        plan = _plan(msg, context, data, session, shared.dimensions)
        ciphertexts = session.share_keys(
            plan, shared.neighbours, shared.mask_publics, shared.channel_publics, shared.identity_keys, shared.key_signatures,
            _group_roster(msg, context, data, session), identity_keys.public_hex(_identity_key(msg, context, data)), _participants(shared),
        )
        _keep(context, session)
        return secure_reply(msg, ShareReply(ciphertexts).fields())
    if stage == SECURE_INPUT:
        asked = InputRequest.of(fields)
        plan = _plan(msg, context, data, session, asked.dimensions)
        release = plan.release(asked.release)
        if not session.held:
            session.hold(asked.held)
        statistic = contribution(msg, data, release.name, dict(context.node_config))
        # The session's own checks first (a request bound to be refused spends nothing), then the
        # durable spend, recorded before the input leaves the device.
        masked, record = session.masked_input(plan, release, asked.participants, statistic)
        _answer_within_budget(msg, context, data, plan, release)
        _keep(context, session)
        record.update({"client": client_id, "identity": identity})
        signed = dict(record)
        if key is not None:
            signed.update({"signature": sign_record(key, record), "public-key": public_pem(key)})
        return secure_reply(msg, signed, ArrayRecord({MASKED_KEY: Array(masked)}))
    if stage == SECURE_CONFIRM:
        asked = ConfirmRequest.of(fields)
        plan = _plan(msg, context, data, session, asked.dimensions)
        me = _identity_key(msg, context, data)
        signature, sketch, sketch_signature = session.confirm(
            plan, asked.release, asked.survivors, asked.masked_sum, me, keep_sketch_matrix=not data.on_device)
        _keep(context, session)
        return secure_reply(msg, ConfirmReply(identity_keys.public_hex(me), signature, sketch, sketch_signature).fields())
    if stage == SECURE_UNMASK:
        asked = UnmaskRequest.of(fields)
        plan = _plan(msg, context, data, session, asked.dimensions)
        seeds, keys = session.unmask(
            plan, asked.release, asked.survivors, asked.dropped, asked.signers, asked.signatures, _group_roster(msg, context, data, session),
        )
        _keep(context, session)
        return secure_reply(msg, UnmaskReply(list(seeds), list(seeds.values()), list(keys), list(keys.values())).fields())
    raise ProtocolRefusal(f"unknown secure-aggregation stage {stage!r}")


def secure_stage(msg: Message, context: Context, request: DeviceRequest) -> Message:
    """The task handler of ``user-noise = distributed``: one stage of the secure sum, the
    statistic masked with this device's noise share."""
    from client.request import request_data
    from client.state import identity, pseudonym, signing_key_path
    from shared.privacy.spend_signature import device_key

    data = request_data(context, request)
    key_path = signing_key_path(context, request.settings)
    key = device_key(key_path) if key_path is not None else None
    return stage_reply(msg, context, data, request.task, pseudonym(context), identity(context), key)
