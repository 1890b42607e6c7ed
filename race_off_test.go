//go:build !race

package imagelb

// raceDetector: see race_on_test.go.
const raceDetector = false
