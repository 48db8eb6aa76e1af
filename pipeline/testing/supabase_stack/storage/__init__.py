"""A stand-in for the Supabase Storage API (supabase/storage), speaking its wire format.

The real server is a Node service shipped only as a Docker image, so this double copies what storage3
sends and parses. Read it by question:
- what is stored, and the rules on names, limits and existing keys: store.py (`StorageStore`);
- what an upload carries (multipart or raw body, `x-upsert`, metadata) and the MIME rule: uploads.py;
- which URL reaches which handler, and who may call it (JWT roles): routes.py (`StorageDouble`);
- how the real service answers (status codes, error bodies, JSON of objects and listings): wire.py.

Where it follows the real server's source rather than its documentation (supabase/storage: uploader.ts,
limits.ts, codes.ts), the behaviour is marked "real server:"; what is inferred is marked "inferred:".
Not served: resumable (TUS) uploads, signed URLs, image transformations, S3 protocol.
"""
