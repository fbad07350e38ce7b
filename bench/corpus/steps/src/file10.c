/* Generated source 10 of the steps context. */
int f10(int x) { return x * 10 + 1; }
