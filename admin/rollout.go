package admin

import (
	"time"

	"go.uber.org/zap"

	"github.com/imagelb/caddy-imagelb/registry"
)

// The rollout routes (POST, GET and DELETE …/services/{image_id}/rollout,
// POST …/rollout/pause, resume and promote). They change the rollout in the
// stable image's record; the driver (package rollout) follows the record.

// RolloutView is a rollout as the API shows it.
type RolloutView struct {
	ImageID int64 `json:"image_id"`
	*registry.Rollout
}

func rolloutView(imageID int64, ro *registry.Rollout) RolloutView {
	return RolloutView{ImageID: imageID, Rollout: ro}
}

func (a *API) startRollout(c *call) (any, error) {
	body, err := a.readBody(c)
	if err != nil {
		return nil, err
	}
	ro, err := registry.DecodeRollout(body)
	if err != nil {
		return nil, err
	}
	started, err := c.reg.StartRollout(c.imageID, ro)
	if err != nil {
		return nil, err
	}
	a.logChange("rollout started", c, zap.Int64("canary_image_id", started.CanaryImageID),
		zap.Float64s("steps", started.Steps), zap.Duration("interval", time.Duration(started.Interval)))
	return created{rolloutView(c.imageID, started)}, nil
}

func (a *API) getRollout(c *call) (any, error) {
	ro, err := c.reg.GetRollout(c.imageID)
	if err != nil {
		return nil, err
	}
	return rolloutView(c.imageID, ro), nil
}

func (a *API) deleteRollout(c *call) (any, error) {
	ro, err := c.reg.DeleteRollout(c.imageID)
	if err != nil {
		return nil, err
	}
	a.logChange("rollout deleted", c, zap.String("state", string(ro.State)))
	return rolloutView(c.imageID, ro), nil
}

func (a *API) pauseRollout(c *call) (any, error) {
	return a.changeRollout(c, "rollout paused", c.reg.PauseRollout)
}

func (a *API) resumeRollout(c *call) (any, error) {
	return a.changeRollout(c, "rollout resumed", c.reg.ResumeRollout)
}

func (a *API) promoteRollout(c *call) (any, error) {
	return a.changeRollout(c, "rollout promoted", c.reg.PromoteRollout)
}

func (a *API) changeRollout(c *call, msg string, change func(int64) (*registry.Rollout, error)) (any, error) {
	ro, err := change(c.imageID)
	if err != nil {
		return nil, err
	}
	a.logChange(msg, c, zap.Int("step", ro.Step), zap.Float64("percent", ro.Percent))
	return rolloutView(c.imageID, ro), nil
}
