"""What each audit check can and cannot see, shown beside its result in the report.

A privacy officer reads a PASS as "this was verified"; each line says how far that goes. The
longer reasons are in docs/privacy.md ("Auditing a run").
"""

from __future__ import annotations

# check -> (what it verifies, what it cannot see)
CHECK_LIMITS: dict[str, tuple[str, str]] = {
    "hash-chain": (
        "the ledger's entries are chained by SHA-256, complete and in order",
        "a ledger rewritten whole with its hashes recomputed (ledger-anchored and spend-signed catch that)",
    ),
    "mechanism-known": (
        "the ledger header's run config names a privacy mechanism this audit has checks for; the header states that mechanism's mode, unit, neighbouring relation, server-side DP and trust, and the ledger holds no entries of another mechanism's kind",
        "a mechanism registered after the run under the same settings but with other checks",
    ),
    "ledger-anchored": (
        "the ledger agrees with the metrics, summary, config, clients file and device state written at the time",
        "a server that rewrote every file of the run consistently before anyone read it",
    ),
    "spend-signed": (
        "each device's spend (and the norm of the update it sent) is signed with its own key, one key per device, none unsigned after a signed one",
        "a device that signs a spend it did not incur; on real devices, keys outside --node-keys unless given",
    ),
    "identity-budget": (
        "no device counted under a new pseudonym or with less history than the ledger holds; no more devices than the population",
        "one person running several devices (the unit is a device)",
    ),
    "epsilon-recomputed": (
        "every claimed epsilon is at least the one recomputed from the recorded history (Opacus RDP, PRV, dp-accounting PLD)",
        "whether the recorded history is what the device ran (spend-signed and noise-conformance look at that)",
    ),
    "epsilon-monotone": (
        "no device's or the server's epsilon ever falls",
        "spend that was never recorded",
    ),
    "steps-match-history": (
        "the accountant history holds exactly the steps recorded round by round",
        "steps run but not recorded by either",
    ),
    "sample-rate": (
        "each sample rate is 1 / ceil(examples / batch size), as Poisson sampling requires",
        "whether the device really sampled that way",
    ),
    "no-batchnorm-stats": (
        "no released checkpoint carries BatchNorm running statistics (not covered by DP-SGD)",
        "other buffers outside the model's state dict",
    ),
    "noise-conformance": (
        "each recorded update or aggregate norm is what the claimed noise gives (chi-square bounds, false alarms 1e-6 a run); for DP-FedAvg, the final checkpoint's distance from the initial one too (no trust in the recorded norms)",
        "a device that skips clipping with the noise as claimed; noise below about 0.9x the claim on small updates; a noise cut hidden under many rounds' clipped signal",
    ),
    "server-accounting": (
        "the DP-FedAvg epsilon recomputed from the recorded rounds, noise and sampling rate",
        "whether clients were really sampled by Poisson (the sampling is the server's word)",
    ),
    "empirical-lower-bound": (
        "a one-run canary lower bound on epsilon, which must not exceed the claim",
        "violations below about ln(canaries): with few canaries it cannot fail and is shown as inconclusive",
    ),
    "release-accounting": (
        "the planned releases in order, each epsilon recomputed (Gaussian DP closed form and PLD), within the budget",
        "whether the server added the noise it recorded (release-noise measures what it recorded)",
    ),
    "release-noise": (
        "each release's recorded noise norm fits the claimed std (chi-square bounds); each released vector keeps the least norm the claimed noise leaves any sum",
        "noise cut under a sum much larger than it (the report gives, per release, the fraction that could go unseen); noise reused or predictable",
    ),
    "release-clipping": (
        "each recorded contribution norm is at most 1 and contributions are counted once",
        "contributions the server dropped or altered before recording them",
    ),
    "release-model": (
        "the served model is the server's post-processing, refitted from the recorded releases and catalog.npz: top items, every item's factors or EASE weights, popularity, voted weights",
        "whether catalog.npz is the real public catalog (anyone holding it can recompute its hash); noise shaped to avoid the top eigenvectors at large epsilon (release-noise sees its norm only)",
    ),
    "secure-plan": (
        "each release ran under the plan the config gives (scale, rounding bound, share variance, threshold, minimum)",
        "devices told a different plan (secure-shares catches that through the plan hash each device signs)",
    ),
    "secure-shares": (
        "every contribution is signed by its device: its noise share, the plan's hash, its masked vector's hash; epsilon recomputed from the shares",
        "a device that signs a noise share it did not add (no zero-knowledge proof); secure-noise reads the sum for that",
    ),
    "secure-noise": (
        "each unmasked sum keeps the least norm the signed honest noise leaves any sum (Anderson's bound); its realised noise, within the contributions' largest norm, meets the signed variances' chi-square interval",
        "a few devices' missing shares where the sum is large beside the noise (the report gives the window per release); noise reused or predictable",
    ),
    "secure-sum": (
        "the masked sum is the one the signers committed to and the sum of the devices' vectors (a sketch drawn after that commitment), the graph is whole, dropped keys are the advertised ones, unmasking is redone; every device's keys signed by its identity, each survivor set and sum by the minimum of devices",
        "devices that lie about their input inside the plausibility window (no range proof)",
    ),
}


def limits_of(check: str) -> tuple[str, str]:
    return CHECK_LIMITS.get(check, ("(not described)", "(not described)"))
