// Package health will run the active and passive health checks of the
// registry's containers. Until then it holds the settings of the checks, so
// that configurations written today keep working when the checker lands.
package health

import "time"

// Defaults of the health-check settings.
const (
	DefaultInterval = 30 * time.Second
	DefaultTimeout  = 5 * time.Second
	DefaultPath     = "/health"
)

// Config is how containers are checked.
type Config struct {
	Interval time.Duration
	Timeout  time.Duration
	Path     string
}

// WithDefaults returns c with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	if c.Interval <= 0 {
		c.Interval = DefaultInterval
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Path == "" {
		c.Path = DefaultPath
	}
	return c
}
