"""What a plugin package builds on: the provider interface, model families and specs, and the registry.

    def register(add, settings):       # named by an entry point in the group `easel.providers`
        add(MyProvider(settings))      # a Provider: runs the models whose spec names it
        add(MY_FAMILY)                 # a ModelFamily: sizes, defaults, what requests may ask of it
        add(ModelSpec(name="my-model", family=MY_FAMILY, source="...", provider=MyProvider.name))

`easel.testing.FakeProvider` stands in for a provider in a plugin's tests.
"""

from .catalog import ModelFamily, ModelSpec, OptionSpec
from .providers.base import Provider, ProviderOutput, ProviderRegistry, StepCallback

__all__ = ["ModelFamily", "ModelSpec", "OptionSpec", "Provider", "ProviderOutput", "ProviderRegistry",
           "StepCallback"]
