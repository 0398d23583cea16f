"""Check the relative links of README.md and docs/*.md: every file exists, every #anchor
names a heading. Run from the repository root: python docs/check_links.py ."""
import re, sys, pathlib, unicodedata
root = pathlib.Path(sys.argv[1])
def anchors(md):
    out=set()
    for line in md.read_text().splitlines():
        m=re.match(r'#+\s+(.*)', line)
        if m:
            t=m.group(1).strip().lower()
            t=re.sub(r'[^\w\- ]','',t).replace(' ','-')
            out.add(t)
    return out
bad=0
files=[root/'README.md']+sorted((root/'docs').glob('*.md'))
for md in files:
    text=md.read_text()
    text=re.sub(r'```.*?```','',text,flags=re.S)
    for target in re.findall(r'\]\(([^)\s]+)\)', text):
        if re.match(r'[a-z]+:', target): continue
        path, _, frag = target.partition('#')
        dest = (md.parent/path).resolve() if path else md
        if not dest.exists():
            print(f"{md.relative_to(root)}: missing {target}"); bad+=1; continue
        if frag and dest.suffix=='.md' and frag not in anchors(dest):
            print(f"{md.relative_to(root)}: no anchor {target}"); bad+=1
        print(f"ok {md.relative_to(root)} -> {target}")
sys.exit(1 if bad else 0)
