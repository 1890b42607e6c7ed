package imagelb

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode"
)

// TestDocsLinks checks that every relative link of README.md and docs/*.md
// reaches a file of the repository, and that every #anchor names a heading
// of the page it points to, by GitHub's rules.
func TestDocsLinks(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	files = append([]string{"README.md"}, files...)
	if len(files) < 7 {
		t.Fatalf("the guide has %d pages, want README.md and at least 6 in docs/", len(files))
	}
	for _, problem := range brokenLinks(t, files) {
		t.Error(problem)
	}
}

// TestDocsLinksCatchBreakage feeds the checker pages with a broken link of
// each kind, so that TestDocsLinks cannot pass by checking nothing.
func TestDocsLinksCatchBreakage(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		t.Helper()
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	other := write("other.md", "# Other page\n\n## What `store etcd` means, for nodes\n\n## Twice\n\n## Twice\n")
	page := write("page.md", strings.Join([]string{
		"# Page",
		"## A heading: with punctuation (and code `x_y`)",
		"[ok](other.md) [ok](other.md#what-store-etcd-means-for-nodes) [ok](#a-heading-with-punctuation-and-code-x_y)",
		"[ok](other.md#twice-1) [ok](https://example.com/#whatever) `[not a link](nowhere.md)`",
		"```",
		"[not a link either](nowhere.md)",
		"```",
		"[missing file](nowhere.md) [missing anchor](other.md#nothing-here) [missing here](#gone) ![img](missing.png)",
		"[too many](other.md#twice-2)",
	}, "\n"))
	got := brokenLinks(t, []string{page, other})
	want := []string{"nowhere.md", "#nothing-here", "#gone", "missing.png", "#twice-2"}
	if len(got) != len(want) {
		t.Fatalf("found %d broken links, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
	for i, w := range want {
		if !strings.Contains(got[i], w) {
			t.Errorf("problem %d is %q, want it to name %q", i, got[i], w)
		}
	}
}

func TestHeadingSlug(t *testing.T) {
	for _, tc := range []struct{ heading, slug string }{
		{"Running several nodes", "running-several-nodes"},
		{"Durability: reloads, restarts, crashes", "durability-reloads-restarts-crashes"},
		{"Statistics (`GET /api/v1/stats[?image_id=N]`, admin `/imagelb/stats`)", "statistics-get-apiv1statsimage_idn-admin-imagelbstats"},
		{"Routes (site prefix; on the admin endpoint replace `/api/v1` with `/imagelb`)", "routes-site-prefix-on-the-admin-endpoint-replace-apiv1-with-imagelb"},
		{"The [map](x.md) of **it**", "the-map-of-it"},
		{"Ünïcode – dash", "ünïcode--dash"},
	} {
		t.Run(tc.heading, func(t *testing.T) {
			if got := headingSlug(tc.heading); got != tc.slug {
				t.Errorf("headingSlug(%q) = %q, want %q", tc.heading, got, tc.slug)
			}
		})
	}
}

var (
	mdLink       = regexp.MustCompile(`!?\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)`)
	mdInlineCode = regexp.MustCompile("`[^`]*`")
	mdHeading    = regexp.MustCompile(`^#{1,6}\s+(.*?)\s*#*\s*$`)
	mdLinkText   = regexp.MustCompile(`\[([^\]]*)\]\([^)]*\)`)
)

// brokenLinks returns one line per link of files that does not resolve.
func brokenLinks(t *testing.T, files []string) []string {
	t.Helper()
	anchors := map[string][]string{} // file (cleaned) → its heading slugs
	slugsOf := func(path string) ([]string, error) {
		path = filepath.Clean(path)
		if s, ok := anchors[path]; ok {
			return s, nil
		}
		text, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		var slugs []string
		seen := map[string]int{}
		for _, line := range markdownLines(string(text)) {
			m := mdHeading.FindStringSubmatch(line)
			if m == nil {
				continue
			}
			slug := headingSlug(m[1])
			if n := seen[slug]; n > 0 {
				seen[slug]++
				slug += "-" + strconv.Itoa(n)
			} else {
				seen[slug] = 1
			}
			slugs = append(slugs, slug)
		}
		anchors[path] = slugs
		return slugs, nil
	}
	var problems []string
	for _, file := range files {
		text, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for n, line := range markdownLines(string(text)) {
			if line == "" {
				continue
			}
			for _, m := range mdLink.FindAllStringSubmatch(mdInlineCode.ReplaceAllString(line, ""), -1) {
				target := m[1]
				if regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9+.-]*:`).MatchString(target) {
					continue // https:, mailto:, ...: not ours to check
				}
				where := file + ":" + strconv.Itoa(n+1) + ": " + m[0]
				path, anchor, _ := strings.Cut(target, "#")
				dest := file
				if path != "" {
					dest = filepath.Join(filepath.Dir(file), filepath.FromSlash(path))
					if _, err := os.Stat(dest); err != nil {
						problems = append(problems, where+": no file "+dest)
						continue
					}
				}
				if anchor == "" {
					continue
				}
				if !strings.HasSuffix(dest, ".md") {
					problems = append(problems, where+": #"+anchor+" on a file that is not Markdown")
					continue
				}
				slugs, err := slugsOf(dest)
				if err != nil {
					problems = append(problems, where+": "+err.Error())
					continue
				}
				if !slices.Contains(slugs, anchor) {
					problems = append(problems, where+": no heading of "+dest+" has the anchor #"+anchor)
				}
			}
		}
	}
	return problems
}

// markdownLines returns the lines of a Markdown text with those inside
// fenced code blocks blanked, so that line numbers stay true.
func markdownLines(text string) []string {
	lines := strings.Split(text, "\n")
	fence := ""
	for i, line := range lines {
		trimmed := strings.TrimSpace(line)
		switch {
		case fence == "" && (strings.HasPrefix(trimmed, "```") || strings.HasPrefix(trimmed, "~~~")):
			fence = trimmed[:3]
			lines[i] = ""
		case fence != "":
			if strings.HasPrefix(trimmed, fence) {
				fence = ""
			}
			lines[i] = ""
		}
	}
	return lines
}

// headingSlug is GitHub's anchor of a heading: the text (links reduced to
// their text) in lower case, letters, digits, spaces, '-' and '_' kept, every
// other character dropped, and each space turned into a '-'.
func headingSlug(heading string) string {
	heading = mdLinkText.ReplaceAllString(heading, "$1")
	var b strings.Builder
	for _, r := range strings.ToLower(heading) {
		switch {
		case unicode.IsLetter(r), unicode.IsDigit(r), r == '-', r == '_':
			b.WriteRune(r)
		case r == ' ':
			b.WriteByte('-')
		}
	}
	return b.String()
}
