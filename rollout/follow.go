package rollout

// Follow has the driver look at the images' rollouts at its next pass, as
// when their records change: in a cluster, when this node takes the lead
// of a rollout it did not drive (Config.Drives now says it does).
func (d *Driver) Follow(ids ...int64) {
	d.noteChanged(ids)
}
