//go:build thingcert_gendocs

package main

// The release build (tools/dist) compiles this file in with
// -tags thingcert_gendocs, runs `thingcert __gen-docs DIR` on the build machine
// and throws that binary away. Man pages and completions come from the command
// tree itself, which lives in this package main and so can be reached only
// from here; the tag keeps cobra/doc and its Markdown-to-roff converter
// (go-md2man, blackfriday) out of the binary that ships.

import (
	"errors"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

func buildOnlyCommands(env *cliEnv) []*cobra.Command {
	return []*cobra.Command{{
		Use:    "__gen-docs DIR",
		Short:  "Write man pages (DIR/man/man1) and bash, zsh and fish completions (DIR/completions)",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return genDocs(c.Root(), args[0])
		},
	}}
}

// genDocs writes the man pages of every visible command and the three shells'
// completion scripts. The man pages' date comes from SOURCE_DATE_EPOCH
// (cobra/doc reads it), so two builds of one commit write the same bytes.
func genDocs(root *cobra.Command, dir string) error {
	if os.Getenv("SOURCE_DATE_EPOCH") == "" {
		return errors.New("__gen-docs: set SOURCE_DATE_EPOCH (the last commit's time), or the man pages carry today's date")
	}
	man := filepath.Join(dir, "man", "man1")
	comp := filepath.Join(dir, "completions")
	for _, d := range []string{man, comp} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	root.DisableAutoGenTag = true
	root.InitDefaultCompletionCmd()
	if err := doc.GenManTree(root, &doc.GenManHeader{Title: "THINGCERT", Section: "1", Source: "thingcert", Manual: "thingcert manual"}, man); err != nil {
		return err
	}
	gens := map[string]func(string) error{
		"thingcert.bash": func(p string) error { return root.GenBashCompletionFileV2(p, true) },
		"_thingcert":     root.GenZshCompletionFile,
		"thingcert.fish": func(p string) error { return root.GenFishCompletionFile(p, true) },
	}
	for name, gen := range gens {
		if err := gen(filepath.Join(comp, name)); err != nil {
			return err
		}
	}
	return nil
}
