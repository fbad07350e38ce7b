/* Generated source 19 of the steps context. */
int f19(int x) { return x * 19 + 1; }
