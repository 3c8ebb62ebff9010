"""The optional compiled extensions; everything else is in pyproject.toml.

* distcache.protocol._cdecoder: the decoder's fast path;
* distcache.cache._shared: the memory engine in shared memory, one cache for every worker of
  ``dc_server -workers N`` (without it, the workers relay to one engine-owning process).

As with aiohttp and msgpack, an extension is never a requirement: where no C compiler exists, or
its build fails, the package installs without it and runs the pure-Python code.
DISTCACHE_NO_EXTENSIONS=1 skips the build (and, at run time, the import).
"""

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that reports a failed compilation and carries on without the extension."""

    def run(self):
        try:
            super().run()
        except Exception as error:  # no compiler at all
            print(f"distcache: C accelerator not built ({error}); using pure Python")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as error:
            print(f"distcache: {ext.name} not built ({error}); using pure Python")


extensions = []
if not os.environ.get("DISTCACHE_NO_EXTENSIONS"):
    extensions.append(
        Extension(
            "distcache.protocol._cdecoder",
            ["distcache/protocol/_cdecoder.c"],
            depends=["distcache/protocol/_cdecoder_schema.h"],
            optional=True,
        )
    )
    extensions.append(
        Extension(
            "distcache.cache._shared",
            ["distcache/cache/_shared.c"],
            # pthread_mutex_consistent and friends live in libpthread before glibc 2.34.
            libraries=["pthread"],
            optional=True,
        )
    )

setup(ext_modules=extensions, cmdclass={"build_ext": OptionalBuildExt})
