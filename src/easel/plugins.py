"""What a plugin package builds on: the provider interface, model families and specs, and the registry.

    class MyProvider(Provider):
        name = "mine"

        def run_batch(self, batch, progress):   # one ProviderOutput per request, one image per seed
            return [ProviderOutput(images=[paint(request, seed) for seed in seeds]) for request, seeds in batch]

    def register(add, settings):       # named by an entry point in the group `easel.providers`
        add(MyProvider(settings))      # a Provider: runs the models whose spec names it
        add(MY_FAMILY)                 # a ModelFamily: sizes, defaults, what requests may ask of it
        add(ModelSpec(name="my-model", family=MY_FAMILY, source="...", provider=MyProvider.name))

`easel.testing.FakeProvider` stands in for a provider in a plugin's tests. A new kind of add-on for the local
diffusers models is an `Adapter` given to `add` the same way (see `easel.providers.diffusers.adapters.base`).
"""

from .catalog import ModelFamily, ModelSpec, OptionSpec
from .providers.base import Batch, Progress, Provider, ProviderOutput, ProviderRegistry, StepCallback
from .providers.diffusers.adapters import Adapter, Call

__all__ = ["Adapter", "Batch", "Call", "ModelFamily", "ModelSpec", "OptionSpec", "Progress", "Provider",
           "ProviderOutput", "ProviderRegistry", "StepCallback"]
