package imagelb

import _ "embed"

// openAPIDocument is the hand-written OpenAPI 3.1 document of the API,
// served at /openapi.json and {prefix}/openapi.json on both mounts.
//
//go:embed docs/openapi.json
var openAPIDocument []byte
