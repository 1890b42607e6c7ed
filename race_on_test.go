//go:build race

package imagelb

// raceDetector: this test binary runs under the race detector, which makes
// in-process registration about ten times slower; tests of scale register
// fewer images then (and say so), and .ci/run also runs them without it.
const raceDetector = true
