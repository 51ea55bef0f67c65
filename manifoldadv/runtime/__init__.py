"""What every command runs on: the device, seeds and versions (`host`), precision and compilation
(`accel`), several processes (`distributed`), the console and progress bars (`console`), and
files written whole (`outputs`)."""

from .host import DEVICES, derive_seed, git_state, resolve_device, seed_everything, versions  # noqa: F401
