"""The Glance half of the OpenStack driver (a mixin of OpenStackCloud): base images, snapshots made with
Nova's createImage and followed in Glance, listing and deleting. A snapshot is never orphaned: its id
comes from the answer (body from 2.45, else Location) or, when the answer has neither (Rackspace may
leave Location out) or was lost, from Glance by name, run and server; a failed or interrupted
create_image deletes what it made.
"""
from __future__ import annotations

import logging
import re
from urllib.parse import quote

from cislaves import TOOL
from cislaves.clouds.base import TAG_DISTRIBUTION, TAG_RUN, Image, Instance, Pending, wait_for
from cislaves.clouds.openstack.api import NotFound
from cislaves.errors import CloudError, ConfigError

log = logging.getLogger(__name__)

IMAGE_STATES = {"active": "available", "queued": "pending", "saving": "pending", "uploading": "pending",
                "importing": "pending", "killed": "failed", "deleted": "deleted", "pending_delete": "deleted",
                "deactivated": "failed"}
IMAGE_FAILED = ("killed", "deleted", "pending_delete", "deactivated")


class ImageMethods:
    """Needs `api`, `nova`, `cfg`, `name` and `IMAGES` from the driver class."""

    def base_image(self, distribution) -> Image:
        """The configured image (exact name or id), else the newest active image matching the pattern."""
        if self.cfg.image:
            return self._image_by_name_or_id(self.cfg.image, distribution)
        pattern = self.cfg.image_pattern or self.IMAGES.get(distribution.name) or \
            distribution.selector(self.name)["name"]
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"clouds.{self.name}.image_pattern: not a valid regular expression: {exc}") from None
        found = [i for i in self.api.glance_images(status="active") if regex.search(i.get("name") or "")]
        if not found:
            raise CloudError(f"{self.api.label}: no active image matches {pattern!r} for {distribution.name}; "
                             f"set clouds.{self.name}.image or image_pattern", cloud=self.name,
                             operation="base_image", code="NoImage")
        newest = max(found, key=lambda i: (i.get("created_at") or "", i["id"]))
        return self._image(newest, distribution.name)

    def get_image(self, image_id: str) -> Image:
        try:
            data = self.api.get("image", f"images/{quote(image_id, safe='')}", f"reading image {image_id}")
        except NotFound:
            raise CloudError(f"{self.api.label}: no image with id {image_id!r}", cloud=self.name,
                             operation="get_image", code="NoImage", status=404) from None
        return self._image(data)

    def list_images(self, filters: dict[str, str] | None = None) -> list[Image]:
        """Images whose properties match every filter (tags are image properties)."""
        filters = filters or {}
        return [self._image(i) for i in self.api.glance_images()
                if all(str(i.get(k)) == str(v) for k, v in filters.items())]

    def delete_image(self, image: Image) -> None:
        if self.api.delete("image", f"images/{quote(image.id, safe='')}", f"deleting image {image.id}"):
            log.info("%s: deleted image %s (%s)", self.name, image.id, image.name)

    def create_image(self, instance: Instance, name: str, tags: dict[str, str]) -> Image:
        """Snapshot the server (createImage), then poll Glance until the image is active.

        The image id comes from the answer's body (2.45+) or Location header; when neither is there
        (Rackspace may omit Location) it is found by name, run and server. On any failure or Ctrl-C
        every image of that name made for this run from this server is deleted: none is orphaned.
        """
        meta = metadata(tags)
        image_id: str | None = None
        try:
            image_id = self._request_image(instance, name, meta)

            def probe():
                try:
                    data = self.api.get("image", f"images/{image_id}", f"reading image {image_id}")
                except NotFound:
                    raise CloudError(f"{self.api.label}: image {image_id} ({name}) was deleted while it was "
                                     f"being saved from server {instance.id}", cloud=self.name,
                                     operation="create_image", code="ImageGone", status=404) from None
                if data.get("status") in IMAGE_FAILED:
                    raise CloudError(f"{self.api.label}: image {image_id} ({name}) ended '{data['status']}' "
                                     f"while being saved from server {instance.id}", cloud=self.name,
                                     operation="create_image", code=data["status"])
                return data if data.get("status") == "active" else Pending(data.get("status", "?"))

            data = wait_for(probe, f"image {image_id} ({name}) to become active", self.cfg.image_timeout,
                            max_delay=10)
        except BaseException:
            self._forget_images(image_id, name, instance)
            raise
        return self._image(data, tags.get(TAG_DISTRIBUTION))

    def _request_image(self, instance: Instance, name: str, meta: dict[str, str]) -> str:
        """POST createImage (retried without making a second image) and return the new image's id.

        Posted through novaclient's SessionClient (`nova.client`: its microversion headers and errors)
        but not with `servers.create_image`, which reads `resp.headers['location']` below 2.45 and so
        raises KeyError on a Location-less answer after the snapshot exists."""
        attempts = [0]

        def post() -> str:
            attempts[0] += 1
            earlier = self._find_images(name, instance) if attempts[0] > 1 else []
            if earlier:
                return earlier[0]["id"]
            resp, body = self.nova.client.post(f"/servers/{quote(instance.id, safe='')}/action",
                                               body={"createImage": {"name": name, "metadata": meta}})
            return (body or {}).get("image_id") or (resp.headers.get("Location") or "").rstrip("/").rsplit("/", 1)[-1]

        image_id = self.api.call(f"creating image {name!r} of server {instance.id}", post)
        if not image_id:  # no Location (Rackspace may leave it out): the image is found by what it carries
            image_id = wait_for(lambda: (self._find_images(name, instance) or [{}])[0].get("id")
                                or Pending("not listed yet"),
                                f"Glance to list the image {name!r} of server {instance.id}",
                                min(self.cfg.image_timeout, 300))
        log.info("%s: image %s (%s) requested from server %s", self.name, image_id, name, instance.id)
        return image_id

    def _find_images(self, name: str, instance: Instance) -> list[dict]:
        """Images of this name saved from this server for this run (Glance's properties say so)."""
        return [i for i in self.api.glance_images(name=name)
                if i.get(TAG_RUN) == instance.run_id and i.get("instance_uuid", instance.id) == instance.id]

    def _image(self, data: dict, distribution: str | None = None) -> Image:
        tags = {k: v for k, v in data.items() if isinstance(v, str) and (k.startswith(f"{TOOL}:") or k == "Name")}
        return Image(id=data["id"], cloud=self.name, name=data.get("name") or "",
                     distribution=data.get(TAG_DISTRIBUTION) or distribution, region=self.api.region,
                     created=data.get("created_at"), source_image=data.get("base_image_ref"),
                     run_id=data.get(TAG_RUN), state=IMAGE_STATES.get(data.get("status"), "unknown"), tags=tags,
                     extra={"status": data.get("status")})

    def _image_by_name_or_id(self, wanted: str, distribution) -> Image:
        if re.fullmatch(r"[0-9a-fA-F-]{32,36}", wanted):
            try:
                return self._image(self.api.get("image", f"images/{wanted}", f"reading image {wanted}"),
                                   distribution.name)
            except NotFound:
                pass
        found = list(self.api.glance_images(name=wanted, status="active"))
        if not found:
            raise CloudError(f"{self.api.label}: no active image named or with id {wanted!r} "
                             f"(clouds.{self.name}.image)", cloud=self.name, operation="base_image", code="NoImage")
        return self._image(max(found, key=lambda i: (i.get("created_at") or "", i["id"])), distribution.name)

    def _forget_images(self, image_id: str | None, name: str, instance: Instance) -> None:
        """Delete the image a failed create_image made (by id, and by name in case the id never came)."""
        try:
            ids = {image_id} if image_id else set()
            ids |= {i["id"] for i in self._find_images(name, instance)}
            for found in ids:
                if self.api.delete("image", f"images/{found}", f"deleting failed image {found}"):
                    log.info("%s: deleted unfinished image %s (%s)", self.name, found, name)
        except CloudError as exc:
            log.warning("%s (it is left for `fab cleanup`)", exc)


def metadata(tags: dict[str, str]) -> dict[str, str]:
    """Nova metadata (and image properties from createImage): strings of at most 255 characters."""
    return {str(k)[:255]: str(v)[:255] for k, v in tags.items()}
