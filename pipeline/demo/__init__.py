"""`slidemill demo`: synth → pretrain → features → train → run → evaluate, on the embedded
default."""

from slidemill.pipeline.demo._demo import HEADS, DemoSettings, run_demo

__all__ = ["HEADS", "DemoSettings", "run_demo"]
