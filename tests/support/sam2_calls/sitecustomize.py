"""Counts SAM 2 work in every Python process that starts with this folder on PYTHONPATH (a CLI run
and the Ray workers it starts, which inherit its environment): each SAM2MaskGenerator built and each
image it is asked to segment appends a line to the file $MASKDEX_TEST_SAM2_CALLS. Only the counting
wraps the real generator; it runs unchanged. See tests/support/sam2_calls.py."""

import importlib.abc
import importlib.util
import os
import sys

_TARGET = "maskdex.operators.sam2.masks"


def _record(what: str) -> None:
    with open(os.environ["MASKDEX_TEST_SAM2_CALLS"], "a") as handle:
        handle.write(f"{what} {os.getpid()}\n")


class _CountSam2(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != _TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            generator = module.SAM2MaskGenerator
            init, generate = generator.__init__, generator.generate

            def counted_init(self, *args, **kwargs):
                _record("build")
                init(self, *args, **kwargs)

            def counted_generate(self, *args, **kwargs):
                _record("generate")
                return generate(self, *args, **kwargs)

            generator.__init__, generator.generate = counted_init, counted_generate

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("MASKDEX_TEST_SAM2_CALLS"):
    sys.meta_path.insert(0, _CountSam2())
