"""The test-only `/__emulator/` routes, so another process can read counters, switch faults and mutate the dataset."""

from __future__ import annotations

from .api.wire import Response, json_response, parse_json
from .config import FaultConfig
from .state import EmulatorState

CONTROL_PREFIX = "/__emulator/"


def control_route(state: EmulatorState, method: str, path: str, raw_body: bytes) -> Response:
    """Answer one `/__emulator/...` request (counters, timeline, faults, targets, dataset, image mutations)."""
    name = path[len(CONTROL_PREFIX) :].strip("/")
    body, body_error = parse_json(raw_body)
    if body_error:
        return json_response(400, {"error": body_error})
    try:
        if name == "health":
            return json_response(200, {"ok": True})
        if name == "counters" and method == "GET":
            return json_response(200, state.counters())
        if name == "timeline" and method == "GET":
            return json_response(200, state.buckets.timeline() if state.buckets is not None else [])
        if name == "counters" and method in ("POST", "DELETE"):
            state.reset_counters()
            return json_response(200, {})
        if name == "faults" and method == "GET":
            return json_response(200, state.fault_state.config.to_dict())
        if name == "faults" and method in ("POST", "PUT", "PATCH"):
            changes = body or {}
            if method == "PATCH":
                changes = {**state.fault_state.config.to_dict(), **changes}
            state.set_faults(FaultConfig.from_dict(changes))
            return json_response(200, state.fault_state.config.to_dict())
        if name == "targets" and method == "GET":
            return json_response(200, state.fault_targets())
        if name == "dataset" and method == "GET":
            dataset = state.dataset
            return json_response(
                200,
                {
                    "image_ids": dataset.image_ids,
                    "owner": dataset.owner,
                    "classes": dataset.classes,
                    "annotation_group": dataset.annotation_group,
                },
            )
        if name.startswith("images/"):
            _, image_id, action = (name.split("/") + ["", ""])[:3]
            if action == "delete" and method in ("POST", "DELETE"):
                state.dataset.delete_image(image_id)
                return json_response(200, {"deleted": image_id})
            if action == "boxes" and method in ("PUT", "POST"):
                state.dataset.set_boxes(image_id, body if isinstance(body, list) else [])
                return json_response(200, {"updated": image_id})
            if action == "labels" and method in ("PUT", "POST"):
                state.dataset.set_labels(image_id, body if isinstance(body, list) else [])
                return json_response(200, {"updated": image_id})
    except KeyError as error:
        return json_response(404, {"error": f"unknown image {error}"})
    except (TypeError, ValueError) as error:
        return json_response(400, {"error": str(error)})
    return json_response(404, {"error": f"no control route {method} {path}"})
