import easel


def test_public_surface_is_pinned():
    assert sorted(easel.__all__) == sorted([
        "AuthenticationError", "ContentPolicyError", "ControlUnit", "EaselError", "GeneratedImage", "GenerationError",
        "ImageRequest", "ImageResult", "InsufficientStorageError", "InvalidRequestError", "JobCancelledError",
        "MissingKeyError", "ModelNotFoundError", "NotFoundError", "PayloadTooLargeError", "PermissionDeniedError",
        "ProviderError", "RateLimitError", "ServiceUnavailableError", "UnsupportedError", "__version__", "edit",
        "generate", "upscale", "vary",
    ])
    for name in easel.__all__:
        assert hasattr(easel, name), name


def test_every_error_knows_its_status_and_openai_shape():
    for name in easel.__all__:
        cls = getattr(easel, name)
        if isinstance(cls, type) and issubclass(cls, easel.EaselError):
            err = cls("boom", param="x")
            assert 400 <= err.status < 600
            assert err.to_dict() == {"message": "boom", "type": err.type, "param": "x", "code": err.code}
            assert cls.__doc__, f"{name} needs a docstring saying when it is raised"


def test_the_plugin_api_is_pinned():
    import easel.plugins

    assert sorted(easel.plugins.__all__) == ["Adapter", "Batch", "Call", "ModelFamily", "ModelSpec", "OptionSpec",
                                             "Progress", "Provider", "ProviderOutput", "ProviderRegistry",
                                             "StepCallback"]
    for name in easel.plugins.__all__:
        assert hasattr(easel.plugins, name), name
