"""Counts SAM 2 work in every Python process that starts with this folder on PYTHONPATH (a CLI run
and the Ray workers it starts, which inherit its environment): each mask generator built (the stock
SAM2MaskGenerator or the batched FastSAM2MaskGenerator) and each image it is asked to segment appends
a line to the file $MASKDEX_TEST_SAM2_CALLS. Only the counting wraps the real generators; they run
unchanged. See tests/support/sam2_calls.py."""

import importlib.abc
import importlib.util
import os
import sys

# module -> (generator class, its method that segments a batch (True) or one image (False))
_TARGETS = {"maskdex.operators.sam2.masks": ("SAM2MaskGenerator", "generate", False),
            "maskdex.operators.sam2.fast_masks": ("FastSAM2MaskGenerator", "generate_batch", True)}


def _record(what: str) -> None:
    with open(os.environ["MASKDEX_TEST_SAM2_CALLS"], "a") as handle:
        handle.write(f"{what} {os.getpid()}\n")


_seen: set[str] = set()


class _CountSam2(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in _TARGETS or name in _seen:
            return None
        _seen.add(name)
        spec = importlib.util.find_spec(name)
        class_name, method, batched = _TARGETS[name]
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            generator = getattr(module, class_name)
            init, generate = generator.__init__, getattr(generator, method)

            def counted_init(self, *args, **kwargs):
                _record("build")
                init(self, *args, **kwargs)

            def counted_generate(self, images, *args, **kwargs):
                for _ in (images if batched else [images]):
                    _record("generate")
                return generate(self, images, *args, **kwargs)

            generator.__init__ = counted_init
            setattr(generator, method, counted_generate)

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("MASKDEX_TEST_SAM2_CALLS"):
    sys.meta_path.insert(0, _CountSam2())
