"""The server's Gaussian releases (``privacy = user``, ``user-noise = central``), whole: the
mechanism class and its releaser (:mod:`.mechanism`: the server clips each device's statistic and
adds the noise) and the audit's checks of its accounting, noise and clipping (:mod:`.audit`).
The devices' side is the releases' bounded statistics in the clear (:mod:`client.statistics`)."""

from server.mechanisms.gaussian_releases.mechanism import GaussianReleases, gaussian_release, noise_stds

__all__ = ["GaussianReleases", "gaussian_release", "noise_stds"]
