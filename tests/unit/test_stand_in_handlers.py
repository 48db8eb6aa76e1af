"""The stand-ins' handlers answer in the real services' wire shapes without a server around them, so a
wire fact can be pinned in milliseconds; the tests against the running stand-ins and the official
clients (test_supabase_stack.py, test_roboflow_emulator.py, test_roboflow_sdk.py) stay the reference."""

from __future__ import annotations

import json

from pipeline.testing.roboflow_emulator import Dataset, EmulatorConfig, FaultConfig
from pipeline.testing.roboflow_emulator.api.routes import RoboflowApi, match_api_route, match_cdn_route
from pipeline.testing.roboflow_emulator.faults import FaultState
from pipeline.testing.roboflow_emulator.images import ImageFactory
from pipeline.testing.supabase_stack.keys import mint_key
from pipeline.testing.supabase_stack.storage.routes import StorageDouble
from pipeline.testing.supabase_stack.storage.store import StorageStore

SECRET = "unit-test-secret-0123456789abcdef0123456789"


def multipart(data: bytes, content_type: str) -> tuple[bytes, dict[str, str]]:
    body = (b'--B\r\nContent-Disposition: form-data; name="file"; filename="f"\r\nContent-Type: '
            + content_type.encode() + b"\r\n\r\n" + data + b"\r\n--B--\r\n")
    return body, {"content-type": "multipart/form-data; boundary=B"}


def test_storage_double_answers_in_storage_wire_format(tmp_path):
    store = StorageStore(tmp_path, global_file_size_limit=1000)
    double = StorageDouble(store, SECRET)
    service = {"authorization": f"Bearer {mint_key(SECRET, 'service_role')}"}
    anon = {"authorization": f"Bearer {mint_key(SECRET, 'anon')}"}
    bucket = json.dumps({"name": "b", "allowed_mime_types": ["image/*"]}).encode()
    assert double.handle("POST", "/bucket", {}, service, bucket).status == 200

    def upload(data: bytes, mime: str, headers: dict):
        body, multipart_headers = multipart(data, mime)
        response = double.handle("POST", "/object/b/dir/a.jpg", {}, {**headers, **multipart_headers}, body)
        return response.status, json.loads(response.body)

    status, payload = upload(b"x" * 10, "image/jpeg", service)
    assert (status, payload["Key"]) == (200, "b/dir/a.jpg")
    assert store.read_meta("b", "dir/a.jpg")["size"] == 10
    # real server: errors are HTTP 400 carrying the real status as a string
    assert upload(b"y", "image/jpeg", service) == (400, {"statusCode": "409", "code": "KeyAlreadyExists",
                                                        "error": "Duplicate",
                                                        "message": "The resource already exists"})
    assert upload(b"y", "text/plain", service)[1]["statusCode"] == "415"
    assert upload(b"y" * 1001, "image/jpeg", service)[1]["code"] == "EntityTooLarge"
    assert upload(b"y", "image/jpeg", anon)[1]["code"] == "AccessDenied"
    listing = json.dumps({"prefix": "dir"}).encode()
    assert json.loads(double.handle("POST", "/object/list/b", {}, anon, listing).body) == []
    entries = json.loads(double.handle("POST", "/object/list/b", {}, service, listing).body)
    assert [(e["name"], e["metadata"]["size"]) for e in entries] == [("a.jpg", 10)]


def test_emulator_api_answers_in_roboflow_wire_format():
    config = EmulatorConfig(image_count=5, seed=3)
    dataset = Dataset(config)
    api = RoboflowApi(config, dataset, ImageFactory(config.seed))
    faults = FaultState(FaultConfig(), dataset, config.seed)

    def answer(method: str, path: str, body: object = None, *, cdn: bool = False):
        route, params = (match_cdn_route if cdn else match_api_route)(method, path)
        return route, api.answer(route, params, {}, body, method, path, faults)

    route, response = answer("GET", "/other-ws/demo-project")
    assert route == "project" and response.status == 404
    assert json.loads(response.body)["error"]["type"] == "NotFoundException"
    # the live API answers an unknown version with 500, the emulator's default
    assert answer("GET", f"/{config.workspace}/{config.project}/9")[1].status == 500
    route, response = answer("POST", f"/{config.workspace}/{config.project}/search", {"limit": 2})
    page = json.loads(response.body)
    assert route == "search" and page["total"] == 5 and len(page["results"]) == 2
    route, response = answer("GET", "/no/such/file.bin", cdn=True)
    assert route == "cdn_unknown" and (response.status, response.content_type.split(";")[0]) == (404, "application/xml")
