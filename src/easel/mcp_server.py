"""`easel mcp`: an MCP server (official `mcp` SDK) with the tools generate_image, edit_image and list_models.

Requests go through the engine, like the HTTP server's. Over stdio (the default) the client is a local agent
and `edit_image` may read image files by path; over streamable HTTP (`--transport http`, bound to 127.0.0.1,
Bearer keys checked when EASEL_API_KEYS is set) images are named by the ids the tools return, never by a path.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.utilities.types import Image
from mcp.types import ImageContent, ResourceLink, TextContent

from ._version import __version__
from .config import Settings, get_settings
from .engine.queue import Engine
from .engine.runner import Runner
from .server.files import UrlSigner, load_secret, signed_image
from .errors import EaselError, InvalidRequestError, NotFoundError
from .tools import describe
from . import masks
from .types import ImageRequest, image_from_bytes


# Easel's parameter names -> the tools' arguments, so that an error names the argument the agent sent
TOOL_PARAMS = {"num_inference_steps": "steps"}


def to_image_request(prompt: str, *, model: str | None = None, n: int = 1, size: str | None = None,
                     aspect: str | None = None, seed: int | None = None, negative_prompt: str | None = None,
                     steps: int | None = None, guidance_scale: float | None = None, strength: float | None = None,
                     image=None, mask=None, mask_blur: int | None = None, only_masked: bool = False) -> ImageRequest:
    """The tools' arguments as a request: the front's one mapping. An image makes it an edit, repainting the
    mask's white area, or with no mask the image's transparent area, or with neither doing what the prompt says
    (by instruction on a model that edits that way, else to the whole picture)."""
    if image is None:
        return ImageRequest(prompt=prompt, model=model, num_images=n, size=size, aspect=aspect, seed=seed,
                            negative_prompt=negative_prompt, num_inference_steps=steps,
                            guidance_scale=guidance_scale)
    area = masks.binary(mask) if mask else masks.edit_area(image)  # None: by instruction, or the whole picture
    return ImageRequest(prompt=prompt, model=model, num_images=n, seed=seed, strength=strength, mode="edit",
                        image=image.convert("RGB"), mask=area, mask_blur=mask_blur, inpaint_full_res=only_masked)


def _load_image(value: str, param: str, runner: Runner, allow_paths: bool):
    """An image given as a history id, base64 (or a data: URL), or (over stdio only) a path."""
    found = runner.workspace().read_image(value) if len(value) < 100 else None
    if found is not None:
        return image_from_bytes(found[1], param)
    data = value.split(",", 1)[1] if value.startswith("data:") else value
    if len(data) > 100:
        try:
            return image_from_bytes(base64.b64decode(data, validate=True), param)
        except binascii.Error:
            pass
    if allow_paths:
        try:
            return image_from_bytes(Path(value).expanduser().read_bytes(), param)
        except OSError:
            raise NotFoundError(f"`{param}`: no image id or readable file {value!r}.", param=param) from None
    raise NotFoundError(f"`{param}` must be an image id from generate_image or base64 image data; got {value[:80]!r}.",
                        param=param)


async def run_tool(engine: Engine, request: ImageRequest, ctx: Context | None,
                   signer: UrlSigner | None = None) -> list[TextContent | ImageContent | ResourceLink]:
    """Run a tool's request as an engine job, reporting its steps as MCP progress; a line naming the saved images,
    their ids and links, then the images, then a link to each (for clients that drop image blocks): over HTTP a
    signed URL (valid 60 minutes), over stdio the saved file. Errors are tool errors in the tools' own terms."""

    async def report(job) -> None:
        if ctx is not None and job.total_steps and job.step:
            await ctx.report_progress(job.step, job.total_steps)

    try:
        result = await engine.submit(request).wait_async(report)
    except EaselError as exc:
        raise ToolError(exc.renamed(TOOL_PARAMS).message) from None
    http = getattr(ctx.request_context, "request", None) if ctx is not None else None
    links = [signer.url(str(http.base_url), im.id) if http is not None and signer is not None
             else Path(im.path).resolve().as_uri() if im.path else None for im in result.images]
    ids = ", ".join(im.id for im in result.images if im.id)
    shown = ", ".join(link for link in links if link)
    line = f"{describe(result)} Image id: {ids}." + (f" Link: {shown}" if shown and http is not None else "")
    contents: list[TextContent | ImageContent | ResourceLink] = [TextContent(type="text", text=line)]
    contents += [Image(data=im.to_bytes("png"), format="png").to_image_content() for im in result.images]
    contents += [ResourceLink(type="resource_link", uri=link, name=Path(im.path or im.id).name,
                              mime_type=f"image/{im.output_format}")
                 for im, link in zip(result.images, links) if link]
    return contents


def build_server(settings: Settings | None = None, allow_paths: bool = True):
    """The MCP server and the engine behind it (started here; stop it with `engine.stop()`)."""
    settings = settings or get_settings()
    runner = Runner(settings, allow_paths=allow_paths)
    engine = Engine.from_settings(runner).start()
    signer = UrlSigner(load_secret(settings.home / "server_secret", settings.server_secret))
    server = MCPServer(name="easel", version=__version__,
                       instructions="Make images from text with Easel: generate_image, edit_image "
                       "(inpainting) and list_models. Images are saved in Easel's workspace; every result names the "
                       "saved file and its id.")

    @server.tool()
    async def generate_image(prompt: str, model: str | None = None, n: int = 1, size: str | None = None,
                             aspect: str | None = None, seed: int | None = None, negative_prompt: str | None = None,
                             steps: int | None = None, guidance_scale: float | None = None,
                             ctx: Context | None = None) -> list[TextContent | ImageContent]:
        """Generate images from a text prompt. Returns a line with the saved file's path and id, and the images.

        model: a name from list_models (default: the configured model); size: WIDTHxHEIGHT; aspect: e.g. 16:9."""
        request = to_image_request(prompt, model=model, n=n, size=size, aspect=aspect, seed=seed,
                                   negative_prompt=negative_prompt, steps=steps, guidance_scale=guidance_scale)
        return await run_tool(engine, request, ctx, signer)

    @server.tool()
    async def edit_image(image: str, prompt: str, mask: str | None = None, model: str | None = None,
                         seed: int | None = None, strength: float | None = None, mask_blur: int | None = None,
                         only_masked: bool = False, more_images: list[str] | None = None,
                         ctx: Context | None = None) -> list[TextContent | ImageContent]:
        """Repaint part of an image to match `prompt` (inpainting), or edit it by instruction. `image`, `mask` and
        `more_images`: image ids returned by generate_image or base64 PNG data (or file paths, over stdio). The
        mask's white area is repainted; without a mask, the image's transparent area; with neither, the prompt says
        what to change ("make it winter"): by instruction on a model that edits that way (flux-kontext,
        qwen-image-edit, flux2-klein; `more_images` for those that take several), else to the whole picture.
        mask_blur: pixels over which the edit blends in (default 4); only_masked: the model sees only the masked
        area, at full resolution (for small areas)."""
        try:
            picture = _load_image(image, "image", runner, allow_paths)
            mask_image = _load_image(mask, "mask", runner, allow_paths) if mask else None
            more = [_load_image(one, "more_images", runner, allow_paths).convert("RGB") for one in more_images or []]
            request = to_image_request(prompt, model=model, seed=seed, strength=strength, image=picture,
                                       mask=mask_image, mask_blur=mask_blur, only_masked=only_masked)
            request = request.replace(references=more)
        except EaselError as exc:
            raise ToolError(exc.renamed(TOOL_PARAMS).message) from None
        return await run_tool(engine, request, ctx, signer)

    @server.tool()
    def list_models() -> str:
        """The models Easel knows, with whether each is on this machine, and how to name remote ones."""
        catalog = runner.catalog
        rows = [{"name": s.name, "family": s.family.name, "local": s.is_available_locally(),
                 "description": s.description} for s in catalog.listed()]
        return json.dumps({"default": settings.default_model, "models": rows,
                           "remote": "openai:MODEL (e.g. openai:gpt-image-1) and hf:ORG/NAME run on remote "
                                     "services with the keys from `easel keys set openai|hf`."}, indent=2)

    server.custom_route("/v1/files/{image_id}/content", methods=["GET"], include_in_schema=False)(
        _file_content(runner, signer))
    return server, engine


def _file_content(runner: Runner, signer: UrlSigner):
    """The HTTP transport's route for the signed links a tool's result gives (the same links `easel serve` signs)."""
    from starlette.responses import JSONResponse, Response

    async def file_content(request):
        image_id, query = request.path_params["image_id"], request.query_params
        found = signed_image(signer, runner.workspace(), image_id, query.get("expires"), query.get("signature"))
        if found is None:
            return JSONResponse({"error": {"message": "This link does not exist or has expired.",
                                           "type": "not_found_error", "param": None, "code": "not_found"}},
                                status_code=404)
        return Response(found[1], media_type=found[2])

    return file_content


MAX_MCP_BODY_BYTES = 72 * 1024 * 1024  # a 50 MB image, base64-encoded, in one tool call


def serve(transport: str = "stdio", host: str = "127.0.0.1", port: int = 8765,
          settings: Settings | None = None) -> None:
    """Run the MCP server until its client goes away (stdio) or it is stopped (http)."""
    settings = settings or get_settings()
    if transport not in ("stdio", "http"):
        raise InvalidRequestError(f"`transport` must be stdio or http but is {transport!r}.", param="transport")
    server, engine = build_server(settings, allow_paths=transport == "stdio")
    try:
        if transport == "stdio":
            anyio.run(server.run_stdio_async)
        else:
            import uvicorn

            from .server.middleware import frame

            app = frame(server.streamable_http_app(host=host), settings.server_keys,
                        public=lambda path: path.startswith("/v1/files/"),  # signed links: the signature is the key
                        max_json_bytes=MAX_MCP_BODY_BYTES, max_multipart_bytes=MAX_MCP_BODY_BYTES)
            uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        engine.stop()
