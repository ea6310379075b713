"""`slidemill demo`: synth → pretrain → features → train → run → evaluate, on the embedded
default; `default_sample` finds the real slide it runs on too."""

from slidemill.pipeline.demo._demo import HEADS, DemoSettings, run_demo
from slidemill.pipeline.demo._sample import default_sample

__all__ = ["HEADS", "DemoSettings", "default_sample", "run_demo"]
