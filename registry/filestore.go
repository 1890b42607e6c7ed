package registry

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// FileStore keeps the state in one local file, replaced atomically: the new
// state is written to a temporary file in the same directory, synced,
// renamed over the old one, and the directory is synced, so a crash leaves
// either the old file or the new one, never a mix.
type FileStore struct {
	Path string
}

// Describe names the file.
func (f *FileStore) Describe() string { return f.Path }

// Load reads the state; a missing file is an empty registry.
func (f *FileStore) Load() (*State, error) {
	data, err := os.ReadFile(f.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading registry state: %w", err)
	}
	st, err := DecodeState(data)
	if err != nil {
		return nil, &CorruptStateError{Where: f.Path, Err: err}
	}
	return st, nil
}

// Commit writes the state durably.
func (f *FileStore) Commit(st *State) error {
	data, err := EncodeState(st)
	if err != nil {
		return fmt.Errorf("encoding registry state: %w", err)
	}
	dir := filepath.Dir(f.Path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, filepath.Base(f.Path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // gone after the rename; cleans up after a failure
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), f.Path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// SetAside renames a corrupt state file out of the way (to
// NAME.corrupt-TIMESTAMP) so that it is kept for inspection and not
// overwritten, and returns the new name.
func (f *FileStore) SetAside() (string, error) {
	aside := fmt.Sprintf("%s.corrupt-%s", f.Path, now().UTC().Format("20060102T150405Z"))
	for i := 2; ; i++ { // never overwrite one set aside earlier
		if _, err := os.Lstat(aside); errors.Is(err, fs.ErrNotExist) {
			break
		}
		aside = fmt.Sprintf("%s.corrupt-%s-%d", f.Path, now().UTC().Format("20060102T150405Z"), i)
	}
	return aside, os.Rename(f.Path, aside)
}

// the file store is the local store
